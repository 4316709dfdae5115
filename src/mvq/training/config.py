"""The training config: `model`, `data`, `loss`, `optim`, `trainer` and `run` sections.

`load_training_config` reads a YAML file, applies `key=value` overrides and validates every
section, so a misspelt key fails before any work with a message naming it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvq.config import ConfigError, apply_overrides, build_dataclass, load_yaml


@dataclass
class OptimConfig:
    """Optimiser and schedule. lr = base_lr × batch × devices × accumulation unless `lr` is set."""

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
        if self.accumulate_grad_batches < 1:
            raise ConfigError("optim.accumulate_grad_batches must be at least 1")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must have two values, got {list(self.betas)}")


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
    """Check `trainer:` keys against lightning.Trainer's arguments."""
    from lightning import Trainer

    valid = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for key in trainer:
        if key in _TRAINER_RESERVED:
            raise ConfigError(f"trainer.{key} cannot be set here: {_TRAINER_RESERVED[key]}")
        if key not in valid:
            import difflib

            close = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {key!r} in trainer (Lightning Trainer argument).{hint} "
                              f"Valid keys: {', '.join(sorted(valid - set(_TRAINER_RESERVED)))}.")
    if str(trainer.get("precision", "32")) in ("16", "16-mixed", "16-true"):
        raise ConfigError("trainer.precision: float16 is not supported (EMA codebooks and the GAN loss need range); "
                          "use bf16-mixed or 32")
    return dict(trainer)


@dataclass
class Stage1Config:
    model: Any
    data: Any
    loss: Any
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: dict = field(default_factory=dict)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class Stage2Config:
    model: Any
    data: Any
    vae: str = ""
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: dict = field(default_factory=dict)
    run: RunConfig = field(default_factory=RunConfig)


STAGE1_SECTIONS = ("model", "data", "loss", "optim", "trainer", "run")
STAGE2_SECTIONS = ("stage", "model", "data", "vae", "optim", "trainer", "run")


def config_stage(raw: dict) -> int:
    """Stage 1 (MQ-VAE) or 2 (Stackformer): an explicit `stage:` key, else a `vae:` key means stage 2."""
    stage = raw.get("stage", 2 if "vae" in raw else 1)
    if stage not in (1, 2):
        raise ConfigError(f"stage must be 1 or 2, got {stage!r}")
    return stage


def _check_sections(raw: dict, allowed: tuple[str, ...], stage: int) -> None:
    for key in raw:
        if key not in allowed:
            import difflib

            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown section {key!r} in a stage-{stage} config.{hint} "
                              f"Valid sections: {', '.join(allowed)}.")


def parse_training_config(raw: dict) -> Stage1Config | Stage2Config:
    """Validate a resolved config mapping into the dataclasses of its stage."""
    from mvq.data.config import DataConfig

    stage = config_stage(raw)
    optim = build_dataclass(OptimConfig, raw.get("optim"), "optim")
    run = build_dataclass(RunConfig, raw.get("run"), "run")
    trainer = validate_trainer_section(dict(raw.get("trainer") or {}))
    if stage == 1:
        from mvq.losses.stage1 import Stage1LossConfig
        from mvq.models.mqvae import MQVAEConfig

        _check_sections(raw, STAGE1_SECTIONS + ("stage",), 1)
        if "model" not in raw:
            raise ConfigError("a stage-1 config needs a 'model:' section")
        return Stage1Config(model=MQVAEConfig.from_mapping(raw["model"]),
                            data=build_dataclass(DataConfig, raw.get("data"), "data"),
                            loss=build_dataclass(Stage1LossConfig, raw.get("loss"), "loss"),
                            optim=optim, trainer=trainer, run=run)
    from mvq.training.stage2_config import parse_stage2

    _check_sections(raw, STAGE2_SECTIONS, 2)
    return parse_stage2(raw, optim=optim, trainer=trainer, run=run)


def reject_reference_layout(raw: dict, path: str | Path) -> None:
    """Training reads mvq's own configs; the reference's layout is for building models only."""
    if isinstance(raw.get("model"), dict) and "params" in raw["model"]:
        raise ConfigError(f"{path} is in the reference release's layout; train from mvq's own configs "
                          "(configs/stage1, configs/stage2). MQVAE.from_config reads the reference layout for models.")


def load_training_config(path: str | Path, overrides: list[str] | None = None) -> tuple[dict, Stage1Config | Stage2Config]:
    """Read, override and validate a training config; returns (resolved mapping, parsed config)."""
    raw = load_yaml(path)
    reject_reference_layout(raw, path)
    raw = apply_overrides(raw, overrides or [])
    return raw, parse_training_config(raw)
