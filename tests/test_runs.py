"""Run folders: locked, refused, written atomically, resumed and exported safely."""

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml

from mvq.config import ConfigError
from mvq.errors import UserError
from mvq.models.mqvae import MQVAE
from mvq.training.checkpoints import read_checkpoint
from mvq.training.run import export, train
from mvq.training.run_folder import locked
from tests.train_helpers import start_training_until, tiny_stage1_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-step stage-1 run (copy it before changing it)."""
    root = tmp_path_factory.mktemp("runs")
    path = tiny_stage1_config(root, trainer={"max_steps": 2, "val_check_interval": 2},
                              run={"image_every_n_steps": 0})
    return train(str(path), [], run_dir=str(root / "run"))


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


class _RunsCode:
    """Unpickling this creates a file: what a crafted checkpoint could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_checkpoint_that_would_run_code_is_refused_unread(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "mvq_state": {}, "payload": _RunsCode(marker)}, run / "checkpoints" / "last.ckpt")
    with pytest.raises(UserError, match="refusing to unpickle"):
        export(run, tmp_path / "out")
    with pytest.raises(UserError, match="refusing to unpickle"):
        train(None, [], resume=str(run))
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_failed_resume_keeps_config_and_a_later_resume_cleans_up(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    saved = (run / "config.yaml").read_bytes()
    with pytest.raises(UserError, match="does not match the config's model"):
        train(None, ["model.codebook_size=32"], resume=str(run))
    assert (run / "config.yaml").read_bytes() == saved
    # A write that a killed run left half-done is removed when the run starts again.
    stale = run / "checkpoints" / ".last.ckpt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(None, ["trainer.max_steps=3"], resume=str(run))
    assert not stale.exists()
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"] == 3


def test_a_run_folder_in_use_is_refused(tmp_path):
    folder = tmp_path / "run"
    with locked(folder):
        with pytest.raises(UserError, match="in use by another mvq train"):
            train(str(tiny_stage1_config(tmp_path)), [], run_dir=str(folder))
    assert not (folder / "config.yaml").exists() and not (folder / "checkpoints").exists()
    with locked(folder):  # released: the next run may take it
        pass


def test_run_folder_mistakes_get_one_line_errors(tmp_path, finished_run):
    config = str(tiny_stage1_config(tmp_path))
    with pytest.raises(UserError, match="already holds a run.*--resume"):
        train(config, [], run_dir=str(finished_run))
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(UserError, match="is a file, not a run folder"):
        train(config, [], run_dir=str(afile))
    with pytest.raises(UserError, match="is a file, not a run folder"):
        train(None, [], resume=str(afile))
    with pytest.raises(ConfigError, match="trainer.max_steps.*-1 for no limit.*-5"):
        train(config, ["trainer.max_steps=-5"], run_dir=str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_truncated_or_foreign_stage_checkpoints_are_refused(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(last)
    checkpoint["mvq_state"]["stage"] = 2
    torch.save(checkpoint, last)
    with pytest.raises(UserError, match="holds a Stackformer \\(stage 2\\) checkpoint"):
        export(run, tmp_path / "out")
    with pytest.raises(UserError, match="holds a Stackformer \\(stage 2\\) checkpoint"):
        train(None, [], resume=str(run))
    data = (finished_run / "checkpoints" / "last.ckpt").read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        export(run, tmp_path / "out")
    with pytest.raises(UserError, match="truncated or corrupt"):
        train(None, [], resume=str(run))


def test_export_writes_the_folder_whole_and_refuses_to_overwrite(tmp_path, finished_run, monkeypatch, capsys):
    from mvq.cli import main

    out = export(finished_run, tmp_path / "vae")
    original = (out / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(finished_run), str(out)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 1 and "not empty" in error and "--overwrite" in error
    assert len(error.strip().splitlines()) == 1
    # A failure midway (here: writing the weights) leaves the old folder as it was.
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(UserError, match="disk is full"):
        export(finished_run, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["vae"]  # no temporary folders left
    monkeypatch.undo()
    assert export(finished_run, out, "best", overwrite=True) == out
    MQVAE.from_pretrained(out)


def test_save_pretrained_never_leaves_config_and_weights_disagreeing(tmp_path, monkeypatch):
    from tests.conftest import TINY_MQVAE

    folder = MQVAE.from_config(TINY_MQVAE).save_pretrained(tmp_path / "vae")
    other = MQVAE.from_config({**TINY_MQVAE, "codebook_size": 32})
    import safetensors.torch

    def fail(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(RuntimeError, match="killed"):
        other.save_pretrained(folder)
    monkeypatch.undo()
    try:
        loaded = MQVAE.from_pretrained(folder)
    except FileNotFoundError:  # refusing to load is fine; loading mismatched parts is not
        return
    assert loaded.config.codebook_size == 64


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_saves_last_checkpoint_and_says_how_to_resume(tmp_path):
    path = tiny_stage1_config(tmp_path, trainer={"max_steps": 500, "val_check_interval": 500},
                              run={"image_every_n_steps": 2, "checkpoint_every_n_steps": 1000})
    run = tmp_path / "run"
    proc = start_training_until(path, run, run / "images" / "step_0000002.png")
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert f"mvq train --resume {run}" in output and "Traceback" not in output
    assert 2 <= read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] < 500
    assert not list((run / "checkpoints").glob("*.tmp"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_accelerator_without_a_gpu_is_one_line_before_any_work(tmp_path):
    config = str(tiny_stage1_config(tmp_path))
    for override in ("trainer.accelerator=gpu", "trainer.accelerator=cuda"):
        with pytest.raises(UserError, match="no usable GPU.*trainer.accelerator=cpu"):
            train(config, [override], run_dir=str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(),
                    reason="checks the message on a machine without a GPU")
def test_mps_accelerator_without_the_device_is_one_line_before_any_work(tmp_path):
    with pytest.raises(UserError, match="no usable GPU.*Apple MPS.*trainer.accelerator=cpu"):
        train(str(tiny_stage1_config(tmp_path)), ["trainer.accelerator=mps"], run_dir=str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def _clear_ranks(monkeypatch):
    for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_run_dir_variable_in_the_users_shell_is_ignored(tmp_path, monkeypatch):
    from mvq.training.run import RUN_DIR_ENV, prepare_run

    _clear_ranks(monkeypatch)
    config = str(tiny_stage1_config(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv(RUN_DIR_ENV, str(elsewhere))
    assert prepare_run(config, [], str(tmp_path / "chosen"), None, None).folder == tmp_path / "chosen"
    # A folder that holds a run is still refused, even when the variable names it.
    held = tmp_path / "held"
    (held / "checkpoints").mkdir(parents=True)
    (held / "checkpoints" / "last.ckpt").write_bytes(b"")
    monkeypatch.setenv(RUN_DIR_ENV, str(held))
    with pytest.raises(UserError, match="already holds a run"):
        prepare_run(config, [], str(held), None, None)
    # ... and its lock is still taken.
    with locked(tmp_path / "busy"):
        monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "busy"))
        with pytest.raises(UserError, match="in use by another mvq train"):
            train(config, [], run_dir=str(tmp_path / "busy"))
    assert not elsewhere.exists()


def test_run_dir_variable_is_followed_by_processes_a_launcher_started(tmp_path, monkeypatch):
    from mvq.training.run import RUN_DIR_ENV, prepare_run

    _clear_ranks(monkeypatch)
    config = str(tiny_stage1_config(tmp_path))
    launched = tmp_path / "launched"
    (launched / "checkpoints").mkdir(parents=True)
    (launched / "checkpoints" / "last.ckpt").write_bytes(b"")  # the launcher's run, started already
    monkeypatch.setenv(RUN_DIR_ENV, str(launched))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert prepare_run(config, [], str(tmp_path / "other"), None, None).folder == launched
    monkeypatch.setenv("LOCAL_RANK", "0")  # rank 0 of node 0 is the launcher itself: --run-dir counts
    assert prepare_run(config, [], str(tmp_path / "other"), None, None).folder == tmp_path / "other"


def test_a_stop_signal_after_the_checkpoint_hook_still_writes_last_ckpt(tmp_path):
    """A signal that lands after LastCheckpoint's batch-end hook is held until the next batch's end."""
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from torch.utils.data import DataLoader, TensorDataset

    from mvq.training.checkpoints import LastCheckpoint

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def on_train_batch_end(self, outputs, batch, batch_idx):  # runs after every callback's hook
            if self.trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(max_steps=50, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[LastCheckpoint(tmp_path, every_n_steps=1000)])
    with pytest.raises(SIGTERMException):
        trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=2))
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 3
