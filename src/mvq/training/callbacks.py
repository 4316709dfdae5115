"""Callbacks of a run: image grids, atomic checkpoints, a clean stop on SIGTERM."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file in the same folder, then renames it into place.

    A run killed in the middle of a save leaves the previous checkpoint intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class LastCheckpoint(ModelCheckpoint):
    """`checkpoints/last.ckpt` every N steps, at the end of every epoch and of training, and on SIGTERM."""

    def __init__(self, dirpath: Path, every_n_steps: int):
        super().__init__(dirpath=dirpath, filename="last", save_top_k=1, every_n_train_steps=every_n_steps,
                         save_on_train_epoch_end=True, enable_version_counter=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.received_sigterm:
            # Lightning stops right after this hook; save the exact state first.
            self._save_checkpoint(trainer, str(Path(self.dirpath) / "last.ckpt"))
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._save_checkpoint(trainer, str(Path(self.dirpath) / "last.ckpt"))


def best_checkpoint(dirpath: Path, monitor: str) -> ModelCheckpoint:
    """`checkpoints/best.ckpt`: the lowest value of `monitor` seen at validation."""
    return ModelCheckpoint(dirpath=dirpath, filename="best", monitor=monitor, mode="min", save_top_k=1,
                           enable_version_counter=False, auto_insert_metric_name=False)


class ReconstructionGrids(Callback):
    """Every N steps: inputs, reconstructions, keep-mask overlays and score heat-maps of fixed validation images."""

    def __init__(self, every_n_steps: int, num_images: int, out_dir: Path):
        self.every_n_steps, self.num_images, self.out_dir = every_n_steps, num_images, Path(out_dir)
        self._images: torch.Tensor | None = None

    def _fixed_images(self, trainer: L.Trainer) -> torch.Tensor:
        if self._images is None:
            dataset = trainer.datamodule.val_dataset
            n = min(self.num_images, len(dataset))
            self._images = torch.stack([dataset[i]["image"] for i in range(n)])
        return self._images

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps:
            return
        if getattr(self, "_last_step", None) == step:
            return
        self._last_step = step
        self.write(trainer, pl_module, step)

    def write(self, trainer, pl_module, step: int) -> Path:
        from mvq.visualize import image_grid, reconstruction_rows, save_image

        model = pl_module.model
        was_training = model.training
        model.eval()
        rows = reconstruction_rows(model, self._fixed_images(trainer).to(pl_module.device))
        model.train(was_training)
        grid = image_grid(rows)
        path = save_image(grid, self.out_dir / f"step_{step:07d}.png")
        logger = trainer.logger
        if logger is not None and hasattr(logger, "experiment") and hasattr(logger.experiment, "add_image"):
            logger.experiment.add_image("reconstructions", grid, step)
        return path
