"""Exclusive OS locks on files: one process at a time in a run folder or an output folder.

An flock goes away with its process, even on kill -9, so a crashed run never leaves a folder
locked. The lock is a plain file (flock on folders fails on NFS).

Why not `filelock` (which mvq uses for its shared file listings): a lock beside a user's output
folder is removed when the job ends, so that nothing is left there. Removing a lock file is only
safe when every locker checks, after locking, that the file it locked is still the one at the path
(else it may hold a deleted file while another process holds a new one); not every `filelock`
release that mvq allows checks that, and its `release` keeps the file. The check is the loop below.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from mvq.errors import UserError


@contextlib.contextmanager
def locked(path: str | os.PathLike, in_use: str, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing) for as long as the block runs.

    Another process holding it is a `UserError` with the message `in_use`. With `remove` the file
    is deleted on the way out, while still held; a process that opened it just before then sees
    that the file it locked is no longer the one at `path` and tries again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(in_use) from exc
            raise
        if _same_file(handle, path):
            break
        handle.close()  # the holder removed the file meanwhile: lock the one at `path` now
    try:
        yield
    finally:
        if remove:
            path.unlink(missing_ok=True)
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def _same_file(handle, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
