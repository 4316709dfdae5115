"""Output folders never swallow their inputs, and a file cut short on disk never counts as written."""

import errno
import os

import numpy as np
import pytest

from tests.test_distributed_sampling import (folder_contents, models, sample_argv,  # noqa: F401 (fixture)
                                             sample_interrupted_after_two_batches)
from tests.test_sampling import run_sample_command

pytestmark = pytest.mark.usefixtures("one_thread")


def _photos(folder, count=2):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((16, 16, 3), 40 * i + 20, np.uint8)).save(folder / f"p{i}.png")
    return folder


def _cli(argv, capsys):
    from mvq.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and "Traceback" not in err
    return err


def test_complete_with_overwrite_refuses_an_out_that_holds_its_inputs(models, tmp_path, capsys):  # noqa: F811
    sf_dir, vae_dir = models
    inputs = _photos(tmp_path / "photos")
    keep = sorted(p.name for p in inputs.iterdir())
    for out in (inputs, tmp_path):  # the inputs' folder itself, and a folder holding it
        err = _cli(["complete", str(inputs), "--vae", str(vae_dir), "--stackformer", str(sf_dir), "--keep-rows", "2",
                    "--labels", "0", "--n", "1", "--device", "cpu", "--out", str(out), "--overwrite"], capsys)
        assert "holds this command's input" in err
    assert sorted(p.name for p in inputs.iterdir()) == keep and sf_dir.is_dir() and vae_dir.is_dir()


def test_sample_and_reconstruct_refuse_an_out_that_holds_their_models(models, tmp_path, capsys):  # noqa: F811
    sf_dir, vae_dir = models
    err = _cli(["sample", *sample_argv(models, sf_dir), "--overwrite"], capsys)
    assert "holds this command's input" in err and (sf_dir / "model.safetensors").is_file()
    err = _cli(["reconstruct", str(_photos(tmp_path / "photos")), "--vae", str(vae_dir), "--out", str(tmp_path),
                "--overwrite"], capsys)
    assert "holds this command's input" in err


def test_export_refuses_to_replace_its_own_run_folder(tmp_path):
    from mvq.errors import UserError
    from mvq.training.run import export

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "config.yaml").write_text("model: {}\n")
    with pytest.raises(UserError, match="holds this command's input"):
        export(run, tmp_path, overwrite=True)
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"x"


def test_overwrite_never_replaces_the_current_folder(models, tmp_path, monkeypatch, capsys):  # noqa: F811
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    err = _cli(["sample", *sample_argv(models, "."), "--overwrite"], capsys)
    assert "current folder" in err
    assert sorted(os.listdir(work)) == ["notes.txt"]  # and no temporary folder left in it


def test_destinations_that_cannot_be_written_are_one_line_before_any_work(models, tmp_path, capsys):  # noqa: F811
    sf_dir, vae_dir = models
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    below_a_file = a_file / "out"
    photos = _photos(tmp_path / "photos")
    commands = [
        ["sample", *sample_argv(models, below_a_file)],
        ["reconstruct", str(photos), "--vae", str(vae_dir), "--out", str(below_a_file)],
        ["complete", str(photos), "--vae", str(vae_dir), "--stackformer", str(sf_dir), "--keep-rows", "1",
         "--labels", "0", "--out", str(below_a_file)],
        ["tokenize", "--vae", str(vae_dir), "--data", str(photos), "--out", str(below_a_file)],
        ["tokenize", "--vae", str(vae_dir), "--data", str(photos), "--out", str(a_file)],
    ]
    for argv in commands:
        err = _cli(argv, capsys)
        assert "a_file" in err and ("is a file" in err or "not a folder" in err), (argv, err)
    assert a_file.read_text() == "x"


def test_atomic_write_keeps_no_file_that_fails_its_check(tmp_path):
    from mvq.storage.atomic import atomic_write
    from mvq.errors import UserError

    def short(tmp):
        raise OSError(errno.ENOSPC, "short write")

    with pytest.raises(UserError, match="disk is full"):
        atomic_write(tmp_path / "f.npy", lambda tmp: open(tmp, "wb").write(b"12"), verify=short)
    assert os.listdir(tmp_path) == []


def test_npy_check_tells_a_cut_short_file(tmp_path):
    from mvq.storage.atomic import atomic_save_npy, npy_is_complete

    path = atomic_save_npy(tmp_path / "a.npy", np.zeros((4, 8, 8, 3), np.uint8))
    assert npy_is_complete(path, rows=4, dtype=np.uint8)
    assert not npy_is_complete(path, rows=5) and not npy_is_complete(path, rows=4, dtype=np.float32)
    path.write_bytes(path.read_bytes()[:-128])
    assert not npy_is_complete(path, rows=4, dtype=np.uint8)


def test_a_sample_shard_cut_short_on_disk_is_sampled_again(models, tmp_path, monkeypatch):  # noqa: F811
    run_sample_command(sample_argv(models, tmp_path / "whole", "--batch-size", "2"))
    out = tmp_path / "out"
    sample_interrupted_after_two_batches(models, out, monkeypatch)
    shard = out / ".sampling" / "shards" / "00000002-00000004.npy"
    shard.write_bytes(shard.read_bytes()[:-128])  # what a full disk left behind under numpy's silent short write
    run_sample_command(sample_argv(models, out, "--batch-size", "2"))
    assert (out / "samples.npz").read_bytes() == (tmp_path / "whole" / "samples.npz").read_bytes()
    assert folder_contents(out) == folder_contents(tmp_path / "whole")


def test_a_checkpoint_cut_short_never_takes_its_name(tmp_path, monkeypatch):
    import torch

    from mvq.errors import UserError
    from mvq.training.checkpoints import AtomicCheckpointIO

    real_save = torch.save

    def short_save(obj, path):
        real_save(obj, path)
        with open(path, "rb+") as handle:
            handle.truncate(os.path.getsize(path) - 64)

    monkeypatch.setattr(torch, "save", short_save)
    with pytest.raises(UserError, match="not written completely"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, tmp_path / "last.ckpt")
    assert os.listdir(tmp_path) == []


def test_a_full_disk_while_a_folder_is_built_is_one_line(tmp_path, monkeypatch, capsys):
    import tempfile

    (tmp_path / "ref.ckpt").write_bytes(b"x")
    (tmp_path / "ref.yml").write_text("model: {}\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    err = _cli(["convert-original", str(tmp_path / "ref.ckpt"), "--config", str(tmp_path / "ref.yml"), "--out",
                str(tmp_path / "out")], capsys)
    assert "disk is full" in err and not (tmp_path / "out").exists()
