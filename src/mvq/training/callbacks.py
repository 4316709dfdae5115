"""Callbacks of every run: stage 1's image grids and unreadable-file report, the stop on a non-finite loss.

Checkpoint callbacks live in `mvq.training.checkpoints`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from mvq.data.images import SkippedFilesWarning
from mvq.errors import UserError
from mvq.visualize import image_grid, reconstruction_rows, save_image


class NonFiniteLoss(UserError):
    """Training stopped because a loss became NaN or infinite."""


class TooManyUnreadableFiles(UserError):
    """More training files failed to decode than `data.max_unreadable_files` allows."""


class UnreadableFilesReport(Callback):
    """At the end of every training epoch: how many files failed to decode (named in `log`), and a stop
    once more than `limit` have, so a broken mount or a damaged copy does not train on stand-ins (`log`: the
    file the datasets append each failure to)."""

    def __init__(self, log: Path, limit: int):
        self.log_path, self.limit = log, limit
        self._reported = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.is_file() else []
        new = lines[self._reported:]
        self._reported = len(lines)
        if new:
            names = ", ".join(line.split("\t", 1)[0] for line in new[:5]) + (" …" if len(new) > 5 else "")
            warnings.warn(SkippedFilesWarning(
                f"epoch {trainer.current_epoch}: {len(new)} training file(s) could not be read and were replaced by "
                f"the next file ({names}); all are listed in {self.log_path}"))
        if len(lines) > self.limit:
            raise TooManyUnreadableFiles(
                f"{len(lines)} training files could not be read, more than data.max_unreadable_files={self.limit}: "
                f"they are listed in {self.log_path}; repair or remove them, or raise the limit, then resume the run")


class StopOnNonFiniteLoss(Callback):
    """Stop the run before a NaN or infinite loss reaches the weights, naming the step and the last good checkpoint.

    Runs before every backward pass (both of stage 1's, stage 2's one), so the weights in memory
    and every checkpoint written so far are finite.
    """

    def __init__(self, checkpoints: Path):
        self.checkpoints = checkpoints

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        last = self.checkpoints / "last.ckpt"
        saved = (f"the last good checkpoint is {last}: resume from it with `mvq train --resume "
                 f"{self.checkpoints.parent}` and a lower optim.lr") if last.is_file() else \
            "no checkpoint was written yet: start again with a lower optim.lr"
        raise NonFiniteLoss(f"the training loss became {float(loss.detach().float().flatten()[0])} at step "
                            f"{trainer.global_step} (learning rate too high, or bad data?); the run stopped before "
                            f"it changed the weights, and {saved}")


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
