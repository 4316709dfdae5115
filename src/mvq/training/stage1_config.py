"""The stage-1 config: an MQ-VAE trained on images with its GAN (docs/method.md §5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mvq.config import ConfigError, build_dataclass
from mvq.convert.config import refuse_reference_names
from mvq.data.config import DataConfig
from mvq.losses.stage1 import Stage1LossConfig
from mvq.models.mqvae import MQVAEConfig
from mvq.models.tokenizer import tokenizer_config
from mvq.models.vqgan import VQGANConfig
from mvq.training.sections import OptimConfig, RunConfig, check_sections, common_sections

SECTIONS = ("stage", "model", "data", "loss", "optim", "trainer", "run")

# Config keys that hold paths: stored absolute, so a run's config.yaml works from any folder.
PATH_KEYS = (("data", "root"), ("run", "init_from"))


@dataclass
class Stage1Config:
    """A stage-1 training config: the tokenizer, its images, its loss, and how the run optimises and records."""

    model: MQVAEConfig | VQGANConfig  # `model.architecture: vqgan` selects the VQGAN baseline
    data: DataConfig
    loss: Stage1LossConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    run: RunConfig = field(default_factory=RunConfig)


def parse_stage1(raw: dict) -> Stage1Config:
    """Validate a stage-1 config mapping into a Stage1Config."""
    check_sections(raw, SECTIONS, 1)
    if "model" not in raw:
        raise ConfigError("a stage-1 config needs a 'model:' section")
    run, trainer = common_sections(raw)
    model = raw["model"]
    refuse_reference_names(model, 1)
    config = Stage1Config(model=tokenizer_config(model),
                          data=build_dataclass(DataConfig, raw.get("data"), "data"),
                          loss=build_dataclass(Stage1LossConfig, raw.get("loss"), "loss"),
                          optim=build_dataclass(OptimConfig, raw.get("optim"), "optim"),
                          trainer=trainer, run=run)
    check_val_keep(config)
    return config


def check_val_keep(config: Stage1Config) -> None:
    """`run.val_keep` budgets exist only for an MQ-VAE, from 1 to its K."""
    if not config.run.val_keep:
        return
    if not isinstance(config.model, MQVAEConfig):
        raise ConfigError("run.val_keep measures an MQ-VAE at other token budgets; a VQGAN keeps every cell, "
                          "remove run.val_keep")
    wrong = [k for k in config.run.val_keep if not 1 <= k <= config.model.num_tokens]
    if wrong:
        raise ConfigError(f"run.val_keep: budgets must lie between 1 and the model's K "
                          f"({config.model.num_tokens}), got {wrong}")
