"""Finding the files under a data folder: the one folder walk every command uses.

Training, `mvq tokenize`, `mvq reconstruct` and `mvq eval` all list files through
`list_files`, so they agree on which files a folder holds. Symbolic links to folders are
followed, but every real folder (device + inode) is read at most once: a link loop or a second
link to the same folder adds nothing and is reported in one warning. A folder that cannot be
read is an error, never a silently empty class.

`list_files(root, cache=True)` (the datasets' way) keeps the list in `root/.mvq/listing.json` (a
folder of its own, so that writing it never changes `root`'s own modification time), or, where
`root` is read-only, in the user's cache folder: the walk is done once, by whichever process
takes the listing's lock first (the other ranks wait and read its result), and reused while every
folder it read still has the modification time it had (adding, removing or renaming a file changes
its folder's). Checking that costs one `stat` per folder instead of reading every entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import filelock

from mvq.storage.atomic import atomic_write_text

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


# The listing kept in a data folder (a hidden folder: no walk ever lists it).
LISTING_DIR = ".mvq"
LISTING_NAME = "listing.json"
LISTING_FORMAT = "mvq-listing-1"
# How long a process waits for another that is listing the same folder.
LISTING_LOCK_SECONDS = 3600
# Folders modified less than this before their walk began are not trusted to show later changes
# (a change within the same clock tick leaves the modification time as it was).
RACY_NS = 100_000_000


def list_files(root: str | os.PathLike, cache: bool = False) -> list[Path]:
    """Every non-hidden file under `root`, recursively, in sorted (deterministic) order.

    A folder's files come before its subfolders' (depth first, names sorted). Entries that are
    not folders (broken links included) are listed, so that reading them reports the problem.
    With `cache`, the list is kept and reused while its folders are unchanged (module docstring).
    """
    root = Path(root)
    if not cache:
        return _walk(root)[0]
    listing = listing_path(root.resolve())
    with filelock.FileLock(f"{listing}.lock", timeout=LISTING_LOCK_SECONDS):
        names = _read_listing(listing, root)
        if names is None:
            started = time.time_ns()
            files, folders = _walk(root)
            prefix = len(os.path.join(os.fspath(root), ""))  # the walk's paths start with it
            names = [os.fspath(path)[prefix:] for path in files]
            _write_listing(listing, root, names, folders, started)
    return [root / name for name in names]


def listing_path(root: Path) -> Path:
    """Where the listing of `root` is kept: beside the data, or in the user's cache for a read-only folder."""
    if os.access(root, os.W_OK):
        if not (root / LISTING_DIR).is_dir():
            (root / LISTING_DIR).mkdir(exist_ok=True)
            time.sleep(RACY_NS / 1e9)  # the walk then starts a clock tick after this change of `root`
        return root / LISTING_DIR / LISTING_NAME
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mvq" / "listings"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / f"{hashlib.sha256(os.fsencode(root)).hexdigest()[:24]}.json"


def _read_listing(listing: Path, root: Path) -> list[str] | None:
    """The kept names (relative to `root`), if the listing is of `root` and every folder it read is
    unchanged (else None: walk again)."""
    try:
        record = json.loads(listing.read_text())
        if record.get("format") != LISTING_FORMAT or record.get("root") != os.fspath(root.resolve()):
            return None
        recent = record["walked_ns"] - RACY_NS
        for folder, mtime in record["folders"].items():
            # A folder changed just before the walk may change again within the same clock tick, which
            # its modification time would not show: such a listing is never trusted (listed again).
            if mtime >= recent or os.stat(os.path.join(root, folder)).st_mtime_ns != mtime:
                return None
        names = record["files"]
        return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing, damaged or of a folder that changed: listed again


def _write_listing(listing: Path, root: Path, names: list[str], folders: dict[str, int], walked_ns: int) -> None:
    record = {"format": LISTING_FORMAT, "root": os.fspath(root.resolve()), "walked_ns": walked_ns,
              "folders": folders, "files": names}
    try:
        atomic_write_text(listing, json.dumps(record, separators=(",", ":")))
    except OSError:
        pass  # an unwritable place only costs the next run another walk


def _walk(root: Path) -> tuple[list[Path], dict[str, int]]:
    """(files, folder → modification time) of one walk of `root`."""
    found: list[Path] = []
    folders: dict[str, int] = {}
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
        folders[os.path.relpath(directory, root)] = status.st_mtime_ns
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
    return found, folders


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
