"""Atomic file and folder writes: the one place where mvq puts bytes on disk safely.

A reader (or a run killed mid-write) sees either the old file or the new one, never half of
it: data goes to a temporary name in the same folder and is renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mvq.errors import UserError

TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    """The process umask. Reading it means setting it, so it is read once here, before any thread runs a write."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def _os_error_line(path: Path, exc: OSError) -> UserError | None:
    """One line for the write failures a user can fix (full disk, read-only place, a file where a folder goes)."""
    if exc.errno == errno.ENOSPC:
        return UserError(f"the disk is full: could not write {path}; free some space and run again")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return UserError(f"cannot write {path} ({os.strerror(exc.errno).lower()}): choose a writable place")
    if exc.errno == errno.ENOTDIR:
        return UserError(f"cannot write {path}: a file stands where a folder is needed on its path")
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[str], None],
                 verify: Callable[[str], None] | None = None) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it to `path`.

    `verify(tmp_path)`, when given, runs after the data are on disk and before the rename: it
    raises if the file is not complete (some writers, numpy's among them, can lose a short
    write on a full disk without raising), so a damaged file never takes the final name.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename, so a crash cannot leave an empty file
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except OSError as exc:
        line = _os_error_line(path, exc)
        if line is not None:
            raise line from exc
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` atomically and check the file's size before it takes its name."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # Python's file writes raise on a short write
            handle.write(data)

    def verify(tmp: str) -> None:
        if os.path.getsize(tmp) != len(data):
            raise OSError(errno.ENOSPC, f"short write: {os.path.getsize(tmp)} of {len(data)} bytes")

    return atomic_write(path, write, verify)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """`np.save` an array atomically, serialised in memory first so that the written size can be checked."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())


def npy_is_complete(path: str | os.PathLike, rows: int | None = None, dtype: Any = None) -> bool:
    """True when the .npy file at `path` is whole (its header's shape fits its size), with `rows` rows of `dtype`."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    if rows is not None and (array.ndim == 0 or array.shape[0] != rows):
        return False
    return dtype is None or array.dtype == np.dtype(dtype)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed atomic write left in `folder` (our own names only)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)]
    for p in stale:
        p.unlink()
    return stale


def check_writable_destination(path: str | os.PathLike, overwrite: bool, what: str = "folder",
                               inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse, before any work, an output folder that cannot or must not be written.

    Refused: a file where the folder goes, a place that cannot be written (read-only, a file on
    the way), a non-empty folder unless `overwrite`, a folder that holds one of the command's
    `inputs` (replacing it would delete them), and with `overwrite` the current folder or one
    that holds it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a {what}: give a folder path")
    refuse_inputs_inside(path, inputs, what)
    if overwrite:
        refuse_working_folder(path, what)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"{path} is not empty: choose another {what}, or pass --overwrite to replace its contents")
    check_can_create(path)
    return path


def refuse_inputs_inside(path: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "folder") -> None:
    """An output folder must not be, or hold, one of the command's inputs: replacing it would delete them."""
    resolved = Path(path).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if source == resolved or resolved in source.parents:
            raise UserError(f"{path} holds this command's input {source}: choose an output {what} that does not "
                            "contain the inputs")


def refuse_working_folder(path: str | os.PathLike, what: str = "folder") -> None:
    """The folder a command runs in (or one holding it) is never replaced as a whole."""
    here, resolved = Path.cwd().resolve(), Path(path).resolve()
    if resolved == here or resolved in here.parents:
        raise UserError(f"{path} is the current folder or holds it: replacing it would replace the folder you are "
                        f"working in; choose a new {what}")


def check_can_create(path: str | os.PathLike) -> None:
    """Refuse a path that cannot be created or written: a file on its way, or a read-only place."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise _os_error_line(path, exc) or UserError(f"cannot write {path}: {exc}") from exc


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False,
                     inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place as a whole on success.

    Yields the temporary folder to write into. A destination refused by
    `check_writable_destination` (or the current folder) is refused before anything is written;
    with `overwrite` the old folder is replaced only once the new one is complete.
    """
    path = check_writable_destination(path, overwrite, inputs=inputs).absolute()  # "." has no sibling to build beside
    refuse_working_folder(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
        yield tmp
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp creates 0700
        replace_directory(tmp, path)
    except OSError as exc:  # a full disk or a read-only place while the folder is built: one line
        line = _os_error_line(path, exc)
        if line is not None:
            raise line from exc
        raise
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp)


def replace_directory(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the finished folder `new` to `path`; an existing `path` is moved aside first and removed only then."""
    new, path = Path(new), Path(path)
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old.", suffix=TMP_SUFFIX))
        os.replace(path, old / "old")
        os.replace(new, path)
        shutil.rmtree(old)
    else:
        os.replace(new, path)
