"""A damaged token store is one error when opened; a damaged part is written again; one writer per part."""

import errno
import os

import numpy as np
import pytest

from mvq.data.token_store import TokenPartWriter, TokenStore, create_store, part_name
from mvq.errors import InvalidInputError, UserError
from mvq.inference.tokenizing import tokenize_dataset
from tests.test_token_store import ImageSet, random_tokens, store_arrays, synthetic_header, vae  # noqa: F401


def _written_store(path, rows=6):
    header = synthetic_header(num_rows=(rows,), codebook_size=300)
    create_store(path, header)
    TokenPartWriter(path, header, rank=0).append(*random_tokens(rows, header, seed=3))
    return path / part_name(0, 1)


def test_codes_out_of_range_are_refused_when_the_store_is_opened(tmp_path):
    part = _written_store(tmp_path)
    codes = np.load(part / "codes.npy", mmap_mode="r+")
    codes[2, 1] = 300  # the codebook has 300 entries: 0..299
    codes.flush()
    del codes
    with pytest.raises(InvalidInputError, match=r"codes.npy holds values in \[\d+, 300\], outside \[0, 300\)"):
        TokenStore(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "reshape"])
def test_a_cut_short_or_reshaped_array_is_refused_when_the_store_is_opened(tmp_path, damage):
    part = _written_store(tmp_path)
    if damage == "truncate":
        data = (part / "codes.npy").read_bytes()
        (part / "codes.npy").write_bytes(data[:len(data) - 5])
    else:
        np.save(part / "positions.npy", np.zeros((6, 5), np.uint8))
    with pytest.raises(InvalidInputError, match="is damaged"):
        TokenStore(tmp_path)


def test_a_part_cut_short_on_disk_is_written_again(vae, tmp_path):  # noqa: F811
    whole, damaged = tmp_path / "whole", tmp_path / "damaged"
    tokenize_dataset(vae, ImageSet(6), whole, batch_size=4, rank=0, world_size=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(vae, ImageSet(6, fail_at=4), damaged, batch_size=4, rank=0, world_size=1, progress=False)
    codes = damaged / part_name(0, 1) / "codes.npy"
    data = codes.read_bytes()
    codes.write_bytes(data[:len(data) // 2])  # finished rows lost too
    tokenize_dataset(vae, ImageSet(6), damaged, batch_size=4, rank=0, world_size=1, progress=False)
    a, b = store_arrays(whole), store_arrays(damaged)
    assert all(np.array_equal(a[name], b[name]) for name in a)


def test_no_room_for_a_part_is_one_error_not_a_crash(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    header = synthetic_header(num_rows=(4,))
    create_store(tmp_path, header)
    with pytest.raises(UserError, match="disk is full"):
        TokenPartWriter(tmp_path, header, rank=0)
    assert not any(p.suffix == ".tmp" for p in (tmp_path / part_name(0, 1)).iterdir())


def test_a_second_tokenize_into_the_same_store_is_refused(vae, tmp_path):  # noqa: F811
    from mvq.storage.locks import locked

    tokenize_dataset(vae, ImageSet(2), tmp_path, batch_size=2, rank=0, world_size=1, progress=False)
    with locked(tmp_path / f".{part_name(0, 1)}.lock", "held"):
        with pytest.raises(UserError, match="being written by another mvq tokenize"):
            tokenize_dataset(vae, ImageSet(2), tmp_path, batch_size=2, rank=0, world_size=1, progress=False)


def test_negative_workers_are_one_error(vae, tmp_path):  # noqa: F811
    with pytest.raises(InvalidInputError, match="workers must be 0 or more"):
        tokenize_dataset(vae, ImageSet(2), tmp_path, num_workers=-1, rank=0, world_size=1, progress=False)
