"""Pieces both training stages share: optimizer schedules, RNG state, throughput, checkpoint hygiene."""

from __future__ import annotations

import math
import time

import lightning as L
import torch

from mvq.training.config import OptimConfig
from mvq.training.schedule import WarmupCosine


def peak_lr(optim: OptimConfig, batch_size: int, world_size: int) -> float:
    """lr = base_lr × batch × devices × accumulation, unless the config fixes `optim.lr`."""
    if optim.lr is not None:
        return optim.lr
    return optim.base_lr * batch_size * world_size * optim.accumulate_grad_batches


def schedule_for(trainer: L.Trainer, optim: OptimConfig, lr: float) -> WarmupCosine:
    """Warm-up + cosine over the optimizer steps this fit will take."""
    per_epoch = max(1, trainer.num_training_batches // optim.accumulate_grad_batches)
    # trainer.max_steps counts optimizer steps already; max_epochs counts passes over the data.
    limits = [trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else math.inf,
              per_epoch * trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else math.inf]
    if not math.isfinite(min(limits)):
        raise ValueError("set trainer.max_steps or trainer.max_epochs: the lr schedule needs a length")
    total = max(1, int(min(limits)))
    if optim.warmup_steps is not None:
        warmup = optim.warmup_steps
    else:
        warmup = int(optim.warmup_epochs * per_epoch)
    return WarmupCosine(warmup, total, optim.min_lr / lr if lr > 0 else 0.0)


class TrainingStateMixin:
    """RNG state and batch counters saved in checkpoints, so a resumed run continues exactly.

    Mixed into LightningModules; the module must set `self.batches_trained = 0` and own a
    datamodule whose train sampler is a ResumableSampler.
    """

    batches_trained: int

    def save_training_state(self, checkpoint: dict) -> None:
        checkpoint["mvq_state"] = {"batches_trained": self.batches_trained,
                                   "torch_rng": torch.get_rng_state(),
                                   "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def load_training_state(self, checkpoint: dict) -> None:
        state = checkpoint.get("mvq_state")
        if state is None:
            raise ValueError("this checkpoint was not written by mvq train (no training state in it)")
        self.batches_trained = state["batches_trained"]
        self._pending_rng = state

    def restore_rng_and_data_position(self) -> None:
        """Called at train start: put the RNGs and the sampler where the checkpoint left them."""
        state = getattr(self, "_pending_rng", None)
        if state is not None:
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self._pending_rng = None
        datamodule = self.trainer.datamodule
        per_epoch = self.trainer.num_training_batches
        if datamodule is not None and hasattr(datamodule, "train_sampler") and per_epoch:
            datamodule.train_sampler.skip_batches = self.batches_trained % per_epoch


class Throughput:
    """Images per second over the last step, measured without device syncs."""

    def __init__(self) -> None:
        self._last = None

    def update(self, images: int) -> float | None:
        now = time.perf_counter()
        rate = None if self._last is None else images / max(now - self._last, 1e-9)
        self._last = now
        return rate
