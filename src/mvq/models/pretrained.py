"""`save_pretrained` / `from_pretrained`: a folder with `config.json` and `model.safetensors`.

A Stackformer folder written by `mvq export` also holds `tokenizer.json`: the weights
fingerprint and config of the tokenizer (MQ-VAE or VQGAN) whose tokens it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

import torch

from mvq.storage.atomic import atomic_write, atomic_write_json
from mvq.config import ConfigError, dataclass_to_dict, load_yaml
from mvq.errors import UserError
from mvq.models.hub import push_folder, push_model, resolve_pretrained

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"


class PretrainedFolderMissing(UserError, FileNotFoundError):
    """A pretrained folder, or one of its files, is not there."""


class PretrainedFolderError(UserError, ValueError):
    """A pretrained folder that cannot be loaded: another model type, corrupt or mismatched files."""


M = TypeVar("M", bound="PretrainedMixin")


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinite values."""
    return [name for name, tensor in state.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def describe_names(names: list[str], limit: int = 3) -> str:
    """`a, b, c and 5 more`: a list of tensor names short enough for one line."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_pretrained_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The config.json of a pretrained folder (with its `model_type`), once both of its files are seen there.

    `directory` may also be a zoo model's name or a Hub id (see `mvq.models.hub.resolve_pretrained`).
    """
    directory = resolve_pretrained(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not directory.is_dir():
        raise PretrainedFolderMissing(f"pretrained folder not found: {directory}")
    for p in (config_path, weights_path):
        if not p.is_file():
            raise PretrainedFolderMissing(
                f"{p} is missing: a pretrained folder holds {CONFIG_NAME} and {WEIGHTS_NAME}, and a Stackformer's "
                f"also {TOKENIZER_NAME} (written by save_pretrained or `mvq export`)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise PretrainedFolderError(f"{config_path} is not valid JSON ({exc}); export the model again") from exc
    if not isinstance(config, dict):
        raise PretrainedFolderError(f"{config_path} is not a JSON object; export the model again")
    return config


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
        if isinstance(source, cls.config_class):
            return cls(source)
        if isinstance(source, (str, Path)):
            source = load_yaml(source)
            if "model" not in source:
                raise ConfigError("the config file has no 'model:' section")
        if "model" in source and isinstance(source["model"], Mapping):
            source = source["model"]
        return cls(cls.config_class.from_mapping(source))

    def save_pretrained(self, directory: str | os.PathLike, push_to_hub: bool = False,
                        repo_id: str | None = None) -> Path:
        """Write config.json and model.safetensors (parameters and buffers) into `directory`; with
        `push_to_hub`, also upload the folder to the Hub repository `repo_id` (default: the folder's name).

        Never leaves a loadable folder whose config and weights disagree: the old config.json
        goes first and the new one comes last, so a write that fails midway leaves a folder
        that refuses to load (config.json missing) rather than one that loads the wrong weights.
        Other files in the folder are left alone.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": self.model_type, **dataclass_to_dict(self.config)}
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        (directory / CONFIG_NAME).unlink(missing_ok=True)
        atomic_write(directory / WEIGHTS_NAME,
                     lambda tmp: save_file(state, tmp, metadata={"format": "pt", "model_type": self.model_type}))
        atomic_write_json(directory / CONFIG_NAME, config)
        if push_to_hub:
            push_folder(directory, repo_id or directory.name)
        return directory

    def push_to_hub(self, repo_id: str, private: bool = False, commit_message: str | None = None,
                    **save_kwargs: Any) -> str:
        """Upload this model as a pretrained folder to the Hugging Face Hub repository `repo_id`."""
        return push_model(self, repo_id, private, commit_message, **save_kwargs)

    @classmethod
    def from_pretrained(cls: type[M], directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                        revision: str | None = None, local_files_only: bool | None = None) -> M:
        """Load a folder written by `save_pretrained` (or a zoo model by name, or a Hub id `org/name` at
        `revision`); the weights must match the config exactly and be finite."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = resolve_pretrained(directory, revision, local_files_only)
        weights_path = directory / WEIGHTS_NAME
        config = read_pretrained_config(directory)
        found = config.pop("model_type", None)
        if found != cls.model_type:
            raise PretrainedFolderError(f"{directory} holds a {found!r} model, not a {cls.model_type!r} model")
        model = cls.from_config(config)
        try:
            state = load_file(str(weights_path), device=str(map_location))
        except SafetensorError as exc:
            raise PretrainedFolderError(f"{weights_path} is truncated or corrupt ({exc}); export the model "
                                        f"again") from exc
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes differ
            raise PretrainedFolderError(f"{weights_path} does not match its config: {exc}") from exc
        if missing or unexpected:
            raise PretrainedFolderError(f"{weights_path} does not match its config: missing {missing[:5]}, "
                                        f"unexpected {unexpected[:5]}")
        broken = non_finite_tensors(state)
        if broken:
            raise PretrainedFolderError(f"{weights_path} holds NaN or infinite values in {len(broken)} of "
                                        f"{len(state)} tensors ({describe_names(broken)}): the model diverged "
                                        "in training; export an earlier checkpoint")
        model = model.to(map_location).eval()
        remember_weights_file(model, weights_path)
        return model


# tokenizer.json's keys, and the names folders written before VQGAN tokenizers existed gave them.
TOKENIZER_RECORD_KEYS = {"tokenizer_fingerprint": "mqvae_fingerprint", "tokenizer_config": "mqvae_config"}


def tokenizer_record_keys(record: Mapping[str, Any]) -> dict[str, Any]:
    """A tokenizer record under the current keys, whether it was written with them or with the earlier ones."""
    return {key: record[key] if key in record else record.get(earlier)
            for key, earlier in TOKENIZER_RECORD_KEYS.items()}


def write_tokenizer_record(directory: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write tokenizer.json: `{"tokenizer_fingerprint": sha256, "tokenizer_config": {...}}` of the tokenizer
    (MQ-VAE or VQGAN) whose tokens a Stackformer learnt. A record under the earlier keys is written under these."""
    return atomic_write_json(Path(directory) / TOKENIZER_NAME, tokenizer_record_keys(record))


def tokenizer_record_of(tokenizer: torch.nn.Module) -> dict[str, Any]:
    """The tokenizer.json record of a loaded MQ-VAE or VQGAN: its weights fingerprint and its config."""
    return {"tokenizer_fingerprint": weights_fingerprint(tokenizer), "tokenizer_config": dataclass_to_dict(tokenizer.config)}


def read_tokenizer_record(directory: str | os.PathLike) -> dict | None:
    """The tokenizer a Stackformer folder was trained with, from its tokenizer.json (current or earlier keys),
    as `{"tokenizer_fingerprint": ..., "tokenizer_config": ... or None}`; None when the folder records none."""
    path = resolve_pretrained(directory) / TOKENIZER_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PretrainedFolderError(f"{path} is not valid JSON ({exc}); export the Stackformer again") from exc
    record = tokenizer_record_keys(record) if isinstance(record, dict) else {}
    if not isinstance(record.get("tokenizer_fingerprint"), str):
        raise PretrainedFolderError(f"{path} does not record a tokenizer fingerprint; export the Stackformer again")
    return record


def _tensor_identity(model: torch.nn.Module) -> list[list[int]]:
    """Where each tensor of the state dict lives and how often it was changed in place (torch counts that)."""
    return [[t.data_ptr(), t._version] for t in model.state_dict().values()]


def remember_weights_file(model: torch.nn.Module, path: Path) -> None:
    """Note the file a model's weights were read from, so that `weights_fingerprint` can use a fingerprint
    computed earlier for that file (as long as the model's tensors are the ones read, unchanged)."""
    status = path.stat()
    model._mvq_weights_file = (f"{path.resolve()}|{status.st_size}|{status.st_mtime_ns}", _tensor_identity(model))


# The fingerprint cache keeps the most recent files' fingerprints, this many.
FINGERPRINTS_KEPT = 256


def _fingerprint_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mvq" / "fingerprints.json"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes, bytes): identifies its weights.

    Token stores and Stackformer folders record their MQ-VAE's fingerprint, so tokens are
    never decoded with another MQ-VAE of the same shapes. A model read by `from_pretrained`, and
    neither moved, cast nor changed since, takes its file's fingerprint from a cache (the user's
    cache folder, keyed by the file's path, size and modification time): it is computed once per file.
    """
    source = getattr(model, "_mvq_weights_file", None)
    key = source[0] if source is not None and source[1] == _tensor_identity(model) else None
    cache = _fingerprint_cache()
    known: dict[str, str] = {}
    if key is not None:
        try:
            known = json.loads(cache.read_text())
            if isinstance(known.get(key), str):
                return known[key]
        except (OSError, ValueError, AttributeError):
            known = {}
    fingerprint = _hash_state(model)
    if key is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            kept = list((known if isinstance(known, dict) else {}).items())[-(FINGERPRINTS_KEPT - 1):]
            atomic_write_json(cache, {**dict(kept), key: fingerprint})
        except OSError:
            pass  # no cache: computed again next time
    return fingerprint


def _hash_state(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
