"""Atomic writes: ordinary permissions without touching the process umask, a full disk in one line."""

import errno
import os
import stat

import pytest

import mvq.storage.atomic
from mvq.storage.atomic import atomic_directory, atomic_write, atomic_write_text
from mvq.errors import UserError


def test_writes_never_change_the_umask_and_get_its_permissions(tmp_path, monkeypatch):
    def no_umask(mask):  # another thread writing at the same moment must never see a changed umask
        raise AssertionError("os.umask called during a write")

    monkeypatch.setattr(os, "umask", no_umask)
    path = atomic_write_text(tmp_path / "a.txt", "hello")
    with atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "x").write_text("x")
    assert path.read_text() == "hello" and (tmp_path / "folder" / "x").read_text() == "x"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mvq.storage.atomic.UMASK
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~mvq.storage.atomic.UMASK


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path):
    def fill_disk(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match="the disk is full.*free some space"):
        atomic_write(tmp_path / "big.bin", fill_disk)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PermissionError):  # other OS errors stay what they are
        atomic_write(tmp_path / "x", lambda tmp: (_ for _ in ()).throw(PermissionError("denied")))
