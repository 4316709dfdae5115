"""Finding the files under a data folder: the one folder walk every command uses.

Training, `mvq tokenize`, `mvq reconstruct` and `mvq eval` all list files through
`list_files`, so they agree on which files a folder holds. Symbolic links to folders are
followed, but every real folder (device + inode) is read at most once: a link loop or a second
link to the same folder adds nothing and is reported in one warning. A folder that cannot be
read is an error, never a silently empty class.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from mvq.data.images import scan_images
from mvq.errors import UserError

# A warning names at most this many links.
MAX_NAMED_LINKS = 10


class FolderLinkWarning(UserWarning):
    """Links under a data folder lead to folders that were already read (loops or duplicates)."""


def visible(name: str) -> bool:
    """Hidden files and folders (a leading dot) are never data."""
    return not name.startswith(".")


def _sorted_entries(directory: Path, root: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"cannot read the folder {directory} ({reason}) under {root}: fix its permissions "
                        "or move it out of the data folder") from exc


def list_files(root: str | os.PathLike) -> list[Path]:
    """Every non-hidden file under `root`, recursively, in sorted (deterministic) order.

    A folder's files come before its subfolders' (depth first, names sorted). Entries that are
    not folders (broken links included) are listed, so that reading them reports the problem.
    """
    root = Path(root)
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    repeated: list[Path] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        status = os.stat(directory)
        identity = (status.st_dev, status.st_ino)
        if identity in seen:
            repeated.append(directory)
            continue
        seen.add(identity)
        subfolders = []
        for entry in _sorted_entries(directory, root):
            if not visible(entry.name):
                continue
            if entry.is_dir():
                subfolders.append(Path(entry.path))
            else:
                found.append(Path(entry.path))
        pending.extend(reversed(subfolders))  # the first subfolder is read next
    if repeated:
        _warn_repeated(repeated, root)
    return found


def _warn_repeated(links: list[Path], root: Path) -> None:
    named = [f"{link} -> {os.path.realpath(link)}" for link in links[:MAX_NAMED_LINKS]]
    more = f"; and {len(links) - len(named)} more" if len(links) > len(named) else ""
    warnings.warn(FolderLinkWarning(
        f"{len(links)} folder link(s) under {root} lead to folders already read (a link loop, or a second "
        f"link to the same folder); each folder was read once: " + "; ".join(named) + more), stacklevel=3)


def subfolders(root: str | os.PathLike) -> list[str]:
    """Names of the non-hidden folders directly under `root`, sorted."""
    return sorted(entry.name for entry in _sorted_entries(Path(root), Path(root))
                  if entry.is_dir() and visible(entry.name))


def collect_images(inputs: list[str]) -> tuple[list[Path], Path]:
    """The readable images among the files and folders given on a command line, and the folder they share.

    Folders are listed with `list_files`; a file reached twice is read once; unreadable files
    are skipped with a line each.
    """
    paths: list[Path] = []
    bases: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(list_files(path))
            bases.append(os.path.abspath(path))
        elif path.is_file():
            paths.append(path)
            bases.append(os.path.abspath(path.parent))
        else:
            raise UserError(f"{item}: no such file or folder")
    unique, seen = [], set()
    for path in paths:
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            unique.append(path)
    good, skipped = scan_images(unique)
    for bad, reason in skipped:
        print(f"skipped {bad}: {reason}")
    if not good:
        raise UserError("no readable images among the inputs")
    return good, Path(os.path.commonpath(bases))


def output_stems(paths: list[Path], base: Path) -> list[str]:
    """One distinct output name per input: its path relative to `base` without the suffix, or
    with it where two inputs differ only by their suffix (`a.png`, `a.jpg`)."""
    relative = [Path(os.path.relpath(os.path.abspath(p), base)) for p in paths]
    stems = [r.with_suffix("").as_posix() for r in relative]
    shared = {s for s in stems if stems.count(s) > 1}
    return [r.as_posix() if s in shared else s for r, s in zip(relative, stems)]
