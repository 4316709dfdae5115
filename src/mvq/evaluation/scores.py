"""Inception Score and KID from Inception outputs (FID: `mvq.evaluation.frechet`).

IS and KID use torch-fidelity's own formulas (same splits, shuffling seed and KID subsets as
its defaults), so numbers match `fidelity --isc --kid` on the same features.
"""

from __future__ import annotations

import torch

from mvq.errors import InvalidInputError


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) over `splits` of exp(E KL(p(y|x) ‖ p(y))), from N×C Inception logits."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.as_tensor(logits).detach().cpu()
    if logits.dim() != 2 or logits.shape[0] < splits:
        raise InvalidInputError(f"Inception Score with {splits} splits needs at least {splits} images, "
                                f"got logits of shape {tuple(logits.shape)}")
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=seed)
    return out["inception_score_mean"], out["inception_score_std"]


def kernel_inception_distance(features1: torch.Tensor, features2: torch.Tensor, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD² with a cubic polynomial kernel over random subsets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    f1, f2 = (torch.as_tensor(f).detach().cpu() for f in (features1, features2))
    n = min(len(f1), len(f2))
    if subset_size > n:
        raise InvalidInputError(f"KID subset size {subset_size} is larger than the smaller image set ({n}); "
                                "lower --kid-subset-size")
    out = kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=subset_size, rng_seed=seed,
                                 verbose=False)
    return out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]
