"""Evaluation results for people and for files: an aligned table, and a JSON record with the settings."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from mvq.storage.atomic import atomic_write_json

LABELS = {
    "rfid": "rFID", "fid": "FID", "psnr": "PSNR (dB)", "ssim": "SSIM", "l1": "L1 ([-1, 1] pixels)", "lpips": "LPIPS",
    "inception_score_mean": "Inception Score", "inception_score_std": "  ± std over splits",
    "kid_mean": "KID", "kid_std": "  ± std over subsets",
    "codebook_usage_percent": "codebook usage (%)", "codebook_perplexity": "codebook perplexity",
    "used_codes": "codes used", "codebook_size": "codebook size",
    "keep_score_kept": "mean score, kept cells", "keep_score_masked": "mean score, masked cells",
    "num_images": "images", "num_samples": "samples", "num_reference": "reference images",
}


def format_table(metrics: dict[str, Any]) -> str:
    """The metrics as an aligned two-column table."""
    rows = []
    for key, value in metrics.items():
        if key not in LABELS:
            continue
        if isinstance(value, float):
            text = "inf" if math.isinf(value) else f"{value:.4f}" if abs(value) < 1e4 else f"{value:.1f}"
        else:
            text = "n/a" if value is None else str(value)
        rows.append((LABELS[key], text))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {text:>12}" for label, text in rows)


def write_results(path: str | os.PathLike, command: str, metrics: dict[str, Any], settings: dict[str, Any]) -> Path:
    """{"command", "metrics", "settings"} as JSON, atomically; non-finite numbers become null (JSON has none)."""
    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return atomic_write_json(path, {"command": command, "metrics": {k: clean(v) for k, v in metrics.items()},
                                    "settings": settings})
