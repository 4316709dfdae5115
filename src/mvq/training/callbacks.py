"""Callbacks of every run: stage 1's image grids, and the stop on a non-finite loss.

Checkpoint callbacks live in `mvq.training.checkpoints`.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from mvq.errors import UserError
from mvq.visualize import image_grid, reconstruction_rows, save_image


class NonFiniteLoss(UserError):
    """Training stopped because a loss became NaN or infinite."""


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
