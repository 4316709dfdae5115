"""Config sections every training run has, whatever the stage: `optim`, `run` and `trainer`.

The stage modules (`stage1_config`, `stage2_config`) build on these; this module imports
neither of them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from mvq.config import ConfigError, build_dataclass, unknown_key_message


@dataclass
class OptimConfig:
    """Optimiser and schedule. lr = base_lr × batch × devices × accumulation unless `lr` is set.

    The defaults are stage 1's (docs/method.md §5); stage 2 has its own (`Stage2OptimConfig`).
    """

    base_lr: float = 4.5e-6
    lr: float | None = None
    min_lr: float = 0.0
    warmup_steps: int | None = None
    warmup_epochs: float = 0.0
    betas: tuple[float, ...] = (0.5, 0.9)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    accumulate_grad_batches: int = 1

    def __post_init__(self) -> None:
        for key in ("base_lr", "lr"):
            value = getattr(self, key)
            if value is not None and not 0 < value < float("inf"):
                raise ConfigError(f"optim.{key} must be a positive number, got {value!r}")
        for key in ("min_lr", "weight_decay", "warmup_epochs"):
            if not 0 <= getattr(self, key) < float("inf"):
                raise ConfigError(f"optim.{key} must be 0 or more, got {getattr(self, key)!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be 0 or more, got {self.warmup_steps!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"optim.grad_clip must be positive (or null for none), got {self.grad_clip!r}")
        if self.accumulate_grad_batches < 1:
            raise ConfigError("optim.accumulate_grad_batches must be at least 1")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must have two values, got {list(self.betas)}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")


@dataclass
class RunConfig:
    """What a run records: seeds, image grids, checkpoints."""

    seed: int = 0
    image_every_n_steps: int = 1000
    num_log_images: int = 8
    checkpoint_every_n_steps: int = 1000
    compile: bool = False
    deterministic: bool = False
    init_from: str | None = None  # a pretrained folder whose weights start the run (not a resume)
    # Stage 1, an MQ-VAE trained for any K: token budgets at which validation also measures PSNR
    # (logged as val/psnr_keep{K}), to follow the budgets that matter besides the largest.
    val_keep: list[int] = field(default_factory=list)


# Trainer arguments that the run sets itself or that have a home elsewhere in the config.
_TRAINER_RESERVED = {
    "callbacks": "set by mvq",
    "logger": "set by mvq (TensorBoard in the run folder)",
    "default_root_dir": "use --run-dir",
    "plugins": "set by mvq",
    "use_distributed_sampler": "set by mvq",
    "accumulate_grad_batches": "use optim.accumulate_grad_batches",
    "gradient_clip_val": "use optim.grad_clip",
    "gradient_clip_algorithm": "use optim.grad_clip",
    "enable_checkpointing": "set by mvq",
}


def validate_trainer_section(trainer: dict[str, Any]) -> dict[str, Any]:
    """Check `trainer:` keys against lightning.Trainer's arguments, and the values mvq relies on."""
    from lightning import Trainer

    valid = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for key in trainer:
        if key in _TRAINER_RESERVED:
            raise ConfigError(f"trainer.{key} cannot be set here: {_TRAINER_RESERVED[key]}")
        if key not in valid:
            raise ConfigError(unknown_key_message(key, sorted(valid - set(_TRAINER_RESERVED)),
                                                  "trainer (Lightning Trainer argument)"))
    for key in ("max_steps", "max_epochs"):
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < -1 or value == 0):
            raise ConfigError(f"trainer.{key} must be a whole number of at least 1, or -1 for no limit, "
                              f"got {value!r}")
    if str(trainer.get("precision", "32")) in ("16", "16-mixed", "16-true"):
        raise ConfigError("trainer.precision: float16 is not supported (EMA codebooks and the GAN loss need range); "
                          "use bf16-mixed or 32")
    return dict(trainer)


def check_sections(raw: dict, allowed: tuple[str, ...], stage: int) -> None:
    """Refuse top-level keys a stage's config does not have, suggesting the closest one."""
    for key in raw:
        if key not in allowed:
            raise ConfigError(unknown_key_message(key, list(allowed), f"a stage-{stage} config (its sections)"))


def common_sections(raw: dict) -> tuple[RunConfig, dict[str, Any]]:
    """The `run` and `trainer` sections of a config mapping, validated."""
    return build_dataclass(RunConfig, raw.get("run"), "run"), validate_trainer_section(dict(raw.get("trainer") or {}))
