"""The run folder: its layout, its lock, and what may be written into it when.

    RUN/
      config.yaml          the resolved config (overrides applied, paths absolute), written when
                           training really starts, so a resume that fails leaves it untouched
      checkpoints/         last.ckpt and best.ckpt (see `mvq.training.checkpoints`)
      logs/                TensorBoard events
      images/              reconstruction or sample grids
      .lock                held (flock) by the one `mvq train` using the folder
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ContextManager

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from mvq.storage.atomic import atomic_write_text, remove_stale_temporaries
from mvq.distributed import local_rank, rank_and_world_size
from mvq.errors import UserError
from mvq.storage.locks import locked as hold_lock

CONFIG_NAME = "config.yaml"
LOCK_NAME = ".lock"


def check_run_dir(folder: Path, option: str) -> Path:
    """Refuse a file where a run folder is expected."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder} is a file, not a run folder: give a folder path")
    return folder


def locked(folder: Path) -> ContextManager[None]:
    """Hold an exclusive OS lock on the run folder for as long as the block runs.

    A second `mvq train` on the same folder is refused instead of mixing its config and
    checkpoints with this run's. The lock goes away with the process, even on kill -9.
    """
    return hold_lock(folder / LOCK_NAME, f"{folder} is in use by another mvq train; wait for it to finish, "
                                         f"or choose another --run-dir")


def remove_interrupted_writes(folder: Path) -> None:
    """Delete the temporary files of writes that a killed run left half-done (call with the lock held)."""
    for sub in (folder, folder / "checkpoints"):
        remove_stale_temporaries(sub)


def write_config(folder: Path, raw: dict) -> Path:
    return atomic_write_text(folder / CONFIG_NAME, OmegaConf.to_yaml(OmegaConf.create(raw)))


class SaveConfigAtStart(Callback):
    """Writes config.yaml once training has really started (after a resumed checkpoint has loaded)."""

    def __init__(self, folder: Path, raw: dict):
        self.folder, self.raw = folder, raw

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            write_config(self.folder, self.raw)


def is_launcher() -> bool:
    """Whether this process owns the run folder: global rank 0, not a process a launcher started."""
    return rank_and_world_size()[0] == 0 and local_rank() == 0 and int(os.environ.get("NODE_RANK", 0)) == 0
