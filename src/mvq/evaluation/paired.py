"""Two models compared image by image on the same images: is the difference beyond noise?

Means over a few hundred images differ by chance; the per-image differences of the same images tell
how much. The verdict is at two standard errors of their mean, in the direction the metric improves.
"""

from __future__ import annotations

import torch

NO_DIFFERENCE = "no difference within 2 standard errors"


def paired_difference(ours: torch.Tensor, other: torch.Tensor, higher_is_better: bool) -> dict:
    """Mean and standard error of the per-image difference ours − other, and its verdict for ours at 2 SE:
    "better", "worse" or NO_DIFFERENCE."""
    difference = ours - other
    mean, error = float(difference.mean()), float(difference.std() / len(difference) ** 0.5)
    better = mean > 2 * error if higher_is_better else mean < -2 * error
    worse = mean < -2 * error if higher_is_better else mean > 2 * error
    return {"difference": mean, "standard_error": error,
            "verdict": "better" if better else "worse" if worse else NO_DIFFERENCE}
