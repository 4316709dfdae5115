"""Telling the reference release's config layout (`model: {target:, params: {...}}`) from mvq's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mvq.config import ConfigError


def is_reference_model_section(section: Any) -> bool:
    """Whether a `model:` section is in the reference's layout (`target:` / `params:`) rather than ours."""
    return isinstance(section, Mapping) and ("params" in section or "target" in section)


def reject_reference_layout(raw: Mapping[str, Any], path: str | Path) -> None:
    """Training reads mvq's own configs; a reference config is for converting its checkpoint."""
    if is_reference_model_section(raw.get("model")):
        raise ConfigError(f"{path} is in the reference release's layout; train from mvq's own configs "
                          "(configs/stage1, configs/stage2), or convert a reference checkpoint with "
                          "`mvq convert-original CKPT --config YAML --out DIR`")
