"""Stage-1 tokenizers by architecture: the MQ-VAE (the default) and the VQGAN baseline.

A stage-1 config's `model:` section picks one with `architecture: mqvae | vqgan`; the rest of
the section is that model's config. Training, export and `run.init_from` go through here so
that both are trained, saved and started from pretrained folders the same way.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from mvq.config import ConfigError
from mvq.models.mqvae import MQVAE, MQVAEConfig
from mvq.models.pretrained import PretrainedFolderError, read_pretrained_config
from mvq.models.vqgan import VQGAN, VQGANConfig

ARCHITECTURES = {"mqvae": MQVAE, "vqgan": VQGAN}

# Config fields that fix the encoder's weights: an MQ-VAE can start its encoder from a VQGAN when they agree.
ENCODER_FIELDS = ("resolution", "in_channels", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels")


def tokenizer_config(section: Mapping[str, Any]) -> MQVAEConfig | VQGANConfig:
    """A stage-1 `model:` section in mvq's names → the config of the architecture it names (default mqvae).

    A section in the reference release's layout or names is translated first by
    `mvq.convert.mqvae_config_section` (`mvq convert-config` does that for a whole training config).
    """
    section = dict(section)
    architecture = section.pop("architecture", "mqvae")
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"model.architecture must be one of {', '.join(ARCHITECTURES)}; got {architecture!r}")
    if architecture == "vqgan":
        return VQGANConfig.from_mapping(section)
    return MQVAEConfig.from_mapping(section)


def architecture_of(config: MQVAEConfig | VQGANConfig) -> type[MQVAE] | type[VQGAN]:
    """The tokenizer class that `config` configures."""
    for architecture in ARCHITECTURES.values():
        if isinstance(config, architecture.config_class):
            return architecture
    raise TypeError(f"{type(config).__name__} is not a tokenizer config ({', '.join(ARCHITECTURES)})")


def build_tokenizer(config: MQVAEConfig | VQGANConfig) -> MQVAE | VQGAN:
    """A new (randomly initialised) tokenizer for `config`."""
    return architecture_of(config)(config)


def read_tokenizer_config(directory: str | os.PathLike) -> MQVAEConfig | VQGANConfig:
    """The validated config of a pretrained MQ-VAE or VQGAN folder, by its config.json (weights not loaded)."""
    mapping = read_pretrained_config(directory)
    model_type = mapping.pop("model_type", None)
    if model_type not in ARCHITECTURES:
        raise PretrainedFolderError(f"{directory} holds a {model_type!r} model, not a tokenizer "
                                    f"({', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[model_type].config_class.from_mapping(mapping)


def load_tokenizer(directory: str | os.PathLike, map_location: str = "cpu") -> MQVAE | VQGAN:
    """Load a pretrained MQ-VAE or VQGAN folder, whichever its config.json says it holds."""
    return architecture_of(read_tokenizer_config(directory)).from_pretrained(directory, map_location)


def initialize_from(model: MQVAE | VQGAN, pretrained: MQVAE | VQGAN, source: str) -> str:
    """Copy `pretrained`'s weights into `model`; return what was copied ("all weights" or "encoder").

    The same architecture and config: every weight. An MQ-VAE from a VQGAN: the encoder, when the
    encoders' configs agree (a public VQGAN then saves much of the MQ-VAE's stage-1 training).
    """
    if type(pretrained) is type(model):
        if pretrained.config != model.config:
            raise ConfigError(f"run.init_from={source}: its model config differs from this config's model section")
        model.load_state_dict(pretrained.state_dict())
        return "all weights"
    if isinstance(model, MQVAE) and isinstance(pretrained, VQGAN):
        ours, theirs = dataclasses.asdict(model.config), dataclasses.asdict(pretrained.config)
        differ = [f"{k} ({ours[k]} vs {theirs[k]})" for k in ENCODER_FIELDS if ours[k] != theirs[k]]
        if differ:
            raise ConfigError(f"run.init_from={source}: the VQGAN's encoder differs from this MQ-VAE's in "
                              f"{', '.join(differ)}; set them as in the VQGAN to start from its encoder")
        model.encoder.load_state_dict(pretrained.encoder.state_dict())
        return "encoder"
    raise ConfigError(f"run.init_from={source}: a {pretrained.model_type} folder cannot start a "
                      f"{model.model_type} (only the same architecture, or an MQ-VAE from a VQGAN's encoder)")
