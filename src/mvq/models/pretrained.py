"""`save_pretrained` / `from_pretrained`: a folder with `config.json` and `model.safetensors`."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

import torch

from mvq.config import dataclass_to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound="PretrainedMixin")


class PretrainedMixin:
    """Adds pretrained-folder I/O to an nn.Module that has a `config` dataclass.

    Subclasses set `model_type` (written into config.json and checked on load, so an MQ-VAE
    folder is never loaded as a Stackformer) and `config_class` (a dataclass with a
    `from_mapping` that validates a `model:` section).
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type]

    @classmethod
    def from_config(cls: type[M], source: "str | os.PathLike | Mapping[str, Any] | Any") -> M:
        """Build from a config object, a `model:` mapping, or a YAML file with a `model:` section."""
        from mvq.config import ConfigError, load_yaml

        if isinstance(source, cls.config_class):
            return cls(source)
        if isinstance(source, (str, Path)):
            source = load_yaml(source)
            if "model" not in source:
                raise ConfigError("the config file has no 'model:' section")
        if "model" in source and isinstance(source["model"], Mapping):
            source = source["model"]
        return cls(cls.config_class.from_mapping(source))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json and model.safetensors (parameters and buffers) into `directory`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": self.model_type, **dataclass_to_dict(self.config)}
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        _atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        try:
            save_file(state, tmp, metadata={"format": "pt", "model_type": self.model_type})
            os.replace(tmp, directory / WEIGHTS_NAME)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return directory

    @classmethod
    def from_pretrained(cls: type[M], directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> M:
        """Load a folder written by `save_pretrained`; the weights must match the config exactly."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not directory.is_dir():
            raise FileNotFoundError(f"pretrained folder not found: {directory}")
        for p in (config_path, weights_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p} is missing: a pretrained folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                    f"(written by save_pretrained or `mvq export`)")
        config: dict[str, Any] = json.loads(config_path.read_text())
        found = config.pop("model_type", None)
        if found != cls.model_type:
            raise ValueError(f"{directory} holds a {found!r} model, not a {cls.model_type!r} model")
        model = cls.from_config(config)
        state = load_file(str(weights_path), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights_path} does not match its config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return model.to(map_location).eval()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes, bytes): identifies its weights.

    Token stores and Stackformer folders record their MQ-VAE's fingerprint, so tokens are
    never decoded with another MQ-VAE of the same shapes.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
