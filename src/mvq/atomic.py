"""Atomic file and folder writes: the one place where mvq puts bytes on disk safely.

A reader (or a run killed mid-write) sees either the old file or the new one, never half of
it: data goes to a temporary name in the same folder and is renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from mvq.errors import UserError

TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    """The process umask. Reading it means setting it, so it is read once here, before any thread runs a write."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename, so a crash cannot leave an empty file
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"the disk is full: could not write {path}; free some space and run again") from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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


def check_writable_destination(path: str | os.PathLike, overwrite: bool, what: str = "folder") -> Path:
    """Refuse to write into a file, or into a non-empty folder unless `overwrite`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a {what}: give a folder path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"{path} is not empty: choose another {what}, or pass --overwrite to replace its contents")
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place as a whole on success.

    Yields the temporary folder to write into. A non-empty destination is refused unless
    `overwrite`; then the old folder is replaced only once the new one is complete.
    """
    path = check_writable_destination(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp creates 0700
        replace_directory(tmp, path)
    finally:
        if tmp.exists():
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
