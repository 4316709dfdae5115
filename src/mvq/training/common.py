"""Pieces both training stages share: the peak lr, the lr schedule, the optimisation step, throughput."""

from __future__ import annotations

import math
import time

import lightning as L

from mvq.config import ConfigError
from mvq.training.schedule import WarmupCosine
from mvq.training.sections import OptimConfig


def peak_lr(optim: OptimConfig, batch_size: int, world_size: int) -> float:
    """lr = base_lr × batch × devices × accumulation, unless the config fixes `optim.lr`."""
    if optim.lr is not None:
        return optim.lr
    return optim.base_lr * batch_size * world_size * optim.accumulate_grad_batches


def schedule_for(trainer: L.Trainer, optim: OptimConfig, lr: float) -> WarmupCosine:
    """Warm-up + cosine over the optimizer steps this fit will take."""
    if trainer.train_dataloader is None:
        # configure_optimizers runs before the fit loop loads the data: load it now (once, as Lightning's
        # estimated_stepping_batches does), or the epoch length reads as 0 batches.
        trainer.fit_loop.setup_data()
    per_epoch = max(1, trainer.num_training_batches // optim.accumulate_grad_batches)
    # trainer.max_steps counts optimizer steps already; max_epochs counts passes over the data.
    limits = [trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else math.inf,
              per_epoch * trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else math.inf]
    if not math.isfinite(min(limits)):
        raise ConfigError("set trainer.max_steps or trainer.max_epochs: the lr schedule needs a length")
    total = max(1, int(min(limits)))
    if optim.warmup_steps is not None:
        warmup = optim.warmup_steps
    else:
        warmup = int(optim.warmup_epochs * per_epoch)
    return WarmupCosine(warmup, total, optim.min_lr / lr if lr > 0 else 0.0)


def optimizer_step(module: L.LightningModule, optimizer, scheduler, grad_clip: float | None,
                   count_step: bool = True) -> None:
    """One manual optimisation step: clip, step, zero the gradients, advance the lr schedule.

    `count_step=False` steps the raw optimizer, so Lightning's global_step does not count it
    (stage 1's discriminator: global_step counts generator steps, as `max_steps` expects).
    """
    if grad_clip:
        module.clip_gradients(optimizer, gradient_clip_val=grad_clip, gradient_clip_algorithm="norm")
    raw = optimizer if count_step else optimizer.optimizer
    raw.step()
    raw.zero_grad(set_to_none=True)
    scheduler.step()


class Throughput:
    """Images per second over the last step, measured without device syncs."""

    def __init__(self) -> None:
        self._last = None

    def update(self, images: int) -> float | None:
        now = time.perf_counter()
        rate = None if self._last is None else images / max(now - self._last, 1e-9)
        self._last = now
        return rate
