"""A token budget per image: how many cells each image needs for a quality target, and what choosing
them per image saves against one fixed budget.

    python experiments/any_k/budget_per_image.py --vae fashion-mnist-32 \
        --data configs/zoo/mqvae_fashion_mnist_32.yaml data.root=DATA [--num-images 2000]
    python experiments/any_k/budget_per_image.py --vae photos-64 --data configs/zoo/mqvae_photos_64.yaml \
        --targets 20 22 --figure runs/budget_per_image_photos-64.png 'data.root=[../shared/photos,../shared/photos-extra]'

Settings fixed before any result was seen: targets PSNR ≥ 22 dB and ≥ 25 dB (8-bit; for the photographs,
whose tokenizer averages about 20 dB, 20 and 22 dB, the zoo's goal), the validation
images' evenly spaced subset of --num-images, its even-indexed half for calibration and its odd half
for evaluation, a one-pass estimate calibrated so that 90 % of the calibration half meet the target.
Per target, on the evaluation half:
  - exact: the fewest cells per image that meet the target (bisection over the model's one ranking;
    `mvq.models.keep_budget.smallest_keep`): their distribution, and the share that cannot meet it
    even with every cell;
  - one pass: the score-mass budget (`score_mass_keep`, no reconstruction): the share that meets the
    target and the mean number of tokens;
  - fixed: the smallest single K with which at least as many images meet the target as with the
    one-pass budgets, and the tokens the one-pass budgets save against it (likewise for the exact ones).
Writes experiments/results/budget_per_image_<vae>.json and a figure of the images that need the
fewest and the most tokens, each beside its reconstruction at its own budget (`--figure` elsewhere: a
figure of images that may not be redistributed stays out of the repository).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[2]
TARGETS_DB = (22.0, 25.0)
CALIBRATION_FRACTION = 0.9
SHOWN = 8
CHUNK = 250


def chunked(function, images: torch.Tensor, *args) -> torch.Tensor:
    """`function(images[i:i+CHUNK], *chunk of each tensor arg)` over the batch, concatenated."""
    parts = []
    for start in range(0, len(images), CHUNK):
        piece = [a[start:start + CHUNK] if torch.is_tensor(a) and len(a) == len(images) else a for a in args]
        parts.append(function(images[start:start + CHUNK], *piece))
    return torch.cat(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", required=True, help="an MQ-VAE: a folder or a zoo name")
    parser.add_argument("--data", required=True, help="a config whose data: section gives the validation images")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--results", type=Path, default=REPOSITORY / "experiments" / "results")
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS_DB), metavar="DB",
                        help=f"PSNR targets (default: {' '.join(f'{t:g}' for t in TARGETS_DB)})")
    parser.add_argument("--figure", type=Path, default=None,
                        help="where the figure goes (default: RESULTS/budget_per_image_<vae>.png)")
    parser.add_argument("overrides", nargs="*", help="data.KEY=VALUE changes of the config")
    args = parser.parse_args()
    started = time.perf_counter()

    from mvq.data.build import dataset_from_path
    from mvq.evaluation.image_metrics import psnr, to_uint8
    from mvq.evaluation.images import evaluation_indices
    from mvq.models.hub import resolve_pretrained
    from mvq.models.keep_budget import calibrate_mass, psnr_at_least, score_mass_keep, smallest_keep
    from mvq.models.tokenizer import load_tokenizer
    from mvq.visualize import fit_scale, labelled_figure, save_figure

    torch.set_grad_enabled(False)
    folder = resolve_pretrained(args.vae)
    vae = load_tokenizer(folder).eval()
    n = vae.config.num_cells
    dataset = dataset_from_path(args.data, "val", vae.config.resolution, args.overrides)
    indices = evaluation_indices(len(dataset), min(args.num_images, len(dataset)))
    images = torch.stack([dataset[int(i)]["image"] for i in indices])
    calibration, evaluation = images[0::2], images[1::2]

    def meets_at(target, keep: torch.Tensor | int) -> torch.Tensor:
        counts = keep if torch.is_tensor(keep) else torch.full((len(evaluation),), keep)
        return chunked(lambda x, k: target(vae(x, keep=k).reconstruction.float(), x), evaluation, counts)

    def psnr8(x: torch.Tensor, k: int) -> torch.Tensor:  # as psnr_at_least measures it: 8-bit against 8-bit
        return psnr(to_uint8(vae(x, keep=k).reconstruction.float().clamp(-1, 1)), to_uint8(x))

    # The evaluation images' PSNR at every fixed K, decoded once for all targets.
    psnr_by_k = torch.stack([chunked(psnr8, evaluation, k) for k in range(1, n + 1)])
    results = {}
    figure = args.figure or args.results / f"budget_per_image_{folder.name}.png"
    for db in args.targets:
        target = psnr_at_least(db)
        exact, met = [], []
        for start in range(0, len(evaluation), CHUNK):
            counts, ok = smallest_keep(vae, evaluation[start:start + CHUNK], target)
            exact.append(counts)
            met.append(ok)
        exact, met = torch.cat(exact), torch.cat(met)
        mass = calibrate_mass(vae, calibration, target, CALIBRATION_FRACTION)
        one_pass = chunked(lambda x: score_mass_keep(vae, x, mass), evaluation)
        one_pass_met = meets_at(target, one_pass)
        share_by_k = (psnr_by_k >= db).float().mean(dim=1)

        def fixed_for(share: float) -> int:
            reaching = (share_by_k >= share - 1e-9).nonzero()
            return int(reaching[0]) + 1 if len(reaching) else n

        share_one_pass = float(one_pass_met.float().mean())
        share_exact = float(met.float().mean())
        k_one_pass, k_exact = fixed_for(share_one_pass), fixed_for(share_exact)
        quantiles = torch.quantile(exact.float(), torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])).tolist()
        results[f"psnr>={db:g}"] = {
            "exact": {"mean_tokens": float(exact.float().mean()), "share_met": share_exact,
                      "quantiles_10_25_50_75_90": quantiles,
                      "histogram": torch.bincount(exact, minlength=n + 1)[1:].tolist(),
                      "fixed_k_same_share": k_exact,
                      "tokens_saved_vs_fixed": 1 - float(exact.float().mean()) / k_exact},
            "one_pass": {"mass": mass, "mean_tokens": float(one_pass.float().mean()), "share_met": share_one_pass,
                         "fixed_k_same_share": k_one_pass,
                         "tokens_saved_vs_fixed": 1 - float(one_pass.float().mean()) / k_one_pass},
            "share_met_by_fixed_k": share_by_k.tolist(),
        }
        print(f"psnr ≥ {db:g} dB: {json.dumps(results[f'psnr>={db:g}']['exact'])[:300]}", flush=True)
        if db == args.targets[0]:  # the figure: fewest and most tokens for the first target
            order = torch.argsort(exact + (~met) * (n + 1), stable=True)
            fewest, most = order[:SHOWN], order[met[order]][-SHOWN:]
            rows, labels = [], []
            for name, chosen in (("fewest", fewest), ("most", most)):
                if not len(chosen):  # no image meets the target at all
                    continue
                recon = vae(evaluation[chosen], keep=exact[chosen]).reconstruction.clamp(-1, 1)
                rows += [evaluation[chosen], recon]
                low, high = int(exact[chosen].min()), int(exact[chosen].max())
                labels += [f"{name}: input", f"at its K ({low} to {high})" if low < high else f"at its K ({low})"]
            if rows:
                scale = fit_scale(evaluation.shape[-1], SHOWN, 900, margin=180)
                save_figure(labelled_figure(rows, labels, scale), figure)

    record = {
        "what": "token budget per image for a PSNR target: exact (bisection), one-pass (score mass), fixed K",
        "vae": folder.name, "num_cells": n, "model_k": vae.config.num_tokens,
        "settings": {"targets_db": list(args.targets), "num_images": len(images), "calibration_images": len(calibration),
                     "evaluation_images": len(evaluation), "calibration_fraction": CALIBRATION_FRACTION},
        "results": results,
        "command": " ".join(["python", "experiments/any_k/budget_per_image.py", *map(shlex.quote, sys.argv[1:])]),
        "wall_seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads(),
    }
    out = args.results / f"budget_per_image_{folder.name}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
