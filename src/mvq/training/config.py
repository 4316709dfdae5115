"""Reading a training config: the one entry point that run, resume, export and tests use.

`load_training_config` reads a YAML file, applies `key=value` overrides, stores paths
absolute and validates every section with the schema of its stage (`stage1_config`,
`stage2_config`, both built on `sections`), so a misspelt key fails before any work with a
message naming it.
"""

from __future__ import annotations

from pathlib import Path

from mvq.config import ConfigError, apply_overrides, dataclass_to_dict, load_yaml
from mvq.convert.layout import reject_reference_layout
from mvq.training import stage1_config, stage2_config
from mvq.training.stage1_config import Stage1Config
from mvq.training.stage2_config import Stage2Config

TrainingConfig = Stage1Config | Stage2Config

__all__ = ["Stage1Config", "Stage2Config", "TrainingConfig", "config_stage", "load_training_config",
           "parse_training_config"]


def config_stage(raw: dict) -> int:
    """Stage 1 (MQ-VAE) or 2 (Stackformer): an explicit `stage:` key, else a `vae:` key means stage 2."""
    stage = raw.get("stage", 2 if "vae" in raw else 1)
    if stage not in (1, 2):
        raise ConfigError(f"stage must be 1 or 2, got {stage!r}")
    return stage


def parse_training_config(raw: dict, resolve: bool = True) -> TrainingConfig:
    """Validate a resolved config mapping into the dataclasses of its stage (`resolve`: see `parse_stage2`)."""
    return stage1_config.parse_stage1(raw) if config_stage(raw) == 1 else stage2_config.parse_stage2(raw, resolve)


def _with_absolute_paths(raw: dict) -> dict:
    """`raw` with its path-valued keys that name existing paths made absolute (relative to the current folder,
    where they were given); other values stay as given: a zoo model's name, a Hub id, or a missing path
    that the loaders then name in their error."""
    keys = stage1_config.PATH_KEYS if config_stage(raw) == 1 else stage2_config.PATH_KEYS
    out = dict(raw)
    for key in keys:
        parent = out
        for name in key[:-1]:
            if not isinstance(parent.get(name), dict):
                parent = None
                break
            parent[name] = dict(parent[name])
            parent = parent[name]
        value = parent.get(key[-1]) if parent is not None else None
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            parent[key[-1]] = str(Path(value).expanduser().resolve())
    return out


def _use_data_folder(raw: dict, data_folder: str) -> dict:
    """Train stage 1 on the images under `data_folder` (the `--data` option)."""
    if config_stage(raw) == 2:
        raise ConfigError("--data takes an image folder for stage 1; stage 2 reads a token store "
                          "(make one with mvq tokenize, then pass data.tokens=STORE)")
    if not Path(data_folder).is_dir():
        raise ConfigError(f"--data {data_folder}: no such folder")
    return {**raw, "data": {**(raw.get("data") or {}), "dataset": "folder", "root": data_folder}}


def load_training_config(path: str | Path, overrides: list[str] | None = None,
                         data_folder: str | None = None, resolve: bool = True) -> tuple[dict, TrainingConfig]:
    """Read, override and validate a training config; returns (resolved mapping, parsed config).

    The mapping is what a run saves as its config.yaml: overrides applied, paths absolute, and for
    stage 2 the complete model section (geometry and classes), so that reading it back with
    `resolve=False` opens no other file.
    """
    raw = load_yaml(path)
    reject_reference_layout(raw, path)
    raw = apply_overrides(raw, overrides or [])
    if data_folder:
        raw = _use_data_folder(raw, data_folder)
    raw = _with_absolute_paths(raw)
    config = parse_training_config(raw, resolve)
    if isinstance(config, Stage2Config):
        raw = {**raw, "model": dataclass_to_dict(config.model)}
    return raw, config
