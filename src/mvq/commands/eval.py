"""`mvq eval`: numbers for tokenizers (recon), for generated samples (gen), and reference statistics (stats)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

WEIGHTS_HELP = (": the file {name} (default: look in the torch hub cache, $TORCH_HOME/hub/checkpoints/); "
                "nothing is downloaded")


def _add_common(parser: argparse.ArgumentParser, out_default: str | None) -> None:
    parser.add_argument("--inception-weights", metavar="FILE",
                        help="torch-fidelity's Inception weights" + WEIGHTS_HELP.format(
                            name="weights-inception-2015-12-05-6726825d.pth"))
    parser.add_argument("--batch-size", type=int, default=50, help="images per forward pass (default: 50)")
    parser.add_argument("--num-workers", type=int, default=4, help="data loading processes (default: 4)")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    if out_default is not None:
        parser.add_argument("--out", default=out_default, metavar="JSON",
                            help=f"where to write the results (default: {out_default})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="rFID/PSNR/SSIM/LPIPS/codebook usage of a tokenizer; FID/IS of samples",
        description="Evaluate an MQ-VAE's reconstructions (recon), generated samples (gen), or precompute "
                    "reference statistics for FID (stats). See the README section 'Evaluation protocol'.")
    commands = parser.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    recon = commands.add_parser(
        "recon", help="reconstruction quality and codebook usage of an MQ-VAE",
        description="rFID (reconstructions against their originals), PSNR, SSIM, LPIPS, codebook usage and "
                    "perplexity, and the mean keep-score of kept and masked cells. Under torchrun each rank "
                    "evaluates its share of the images and the results are combined.")
    recon.add_argument("--vae", required=True, metavar="DIR", help="pretrained MQ-VAE folder (save_pretrained)")
    recon.add_argument("--data", required=True, metavar="CONFIG_OR_FOLDER",
                       help="a YAML config (its data: section) or a folder of images")
    recon.add_argument("--split", choices=["train", "val"], default="val", help="dataset split (default: val)")
    recon.add_argument("--n", type=int, default=None, metavar="N",
                       help="evaluate a seeded random subset of N images (default: all)")
    recon.add_argument("--vgg-weights", metavar="FILE",
                       help="VGG16 weights for LPIPS" + WEIGHTS_HELP.format(name="vgg16-397923af.pth"))
    recon.add_argument("--no-fid", action="store_true", help="skip rFID (no Inception needed)")
    recon.add_argument("--no-lpips", action="store_true", help="skip LPIPS (no VGG16 needed)")
    _add_common(recon, "eval_recon.json")
    recon.set_defaults(func=run_recon)

    gen = commands.add_parser(
        "gen", help="FID, IS (and KID) of generated samples",
        description="FID and Inception Score of samples (a folder of images or an .npz with arr_0 N×R×R×3 "
                    "uint8) against reference images or precomputed statistics.")
    gen.add_argument("--samples", required=True, metavar="DIR_OR_NPZ", help="generated images")
    gen.add_argument("--ref", required=True, metavar="DIR_OR_NPZ_OR_STATS",
                     help="reference images (folder, .npz) or statistics (.npz with mu, sigma)")
    gen.add_argument("--n", type=int, default=None, metavar="N", help="use the first N samples (default: all)")
    gen.add_argument("--resolution", type=int, default=None, metavar="R",
                     help="resize and centre-crop images to R×R (default: reference images take the samples' size)")
    gen.add_argument("--kid", action="store_true", help="also compute KID (needs reference images)")
    gen.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default: 1000)")
    gen.add_argument("--isc-splits", type=int, default=10, help="Inception Score splits (default: 10)")
    _add_common(gen, "eval_gen.json")
    gen.set_defaults(func=run_gen)

    stats = commands.add_parser(
        "stats", help="precompute FID reference statistics (mu, sigma) of a dataset",
        description="Inception pool-feature mean and covariance of a dataset, written once to an .npz that "
                    "`mvq eval gen --ref` reads.")
    stats.add_argument("--data", required=True, metavar="CONFIG_OR_FOLDER_OR_NPZ",
                       help="a YAML config (its data: section), a folder of images, or an .npz of images")
    stats.add_argument("--out", required=True, metavar="STATS.npz", help="statistics file to write")
    stats.add_argument("--split", choices=["train", "val"], default="train",
                       help="dataset split when --data is a config (default: train)")
    stats.add_argument("--n", type=int, default=None, metavar="N", help="use at most N images (default: all)")
    stats.add_argument("--resolution", type=int, default=None, metavar="R",
                       help="resize and centre-crop to R×R (default: the config's resolution, or the images' own)")
    _add_common(stats, None)
    stats.set_defaults(func=run_stats)


def _device(name: str):
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


LABELS = {
    "rfid": "rFID", "fid": "FID", "psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS",
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


def _write_results(path: str, command: str, metrics: dict[str, Any], settings: dict[str, Any]) -> None:
    def clean(v):  # JSON has no inf/nan
        return None if isinstance(v, float) and not math.isfinite(v) else v

    payload = {"command": f"mvq eval {command}", "metrics": {k: clean(v) for k, v in metrics.items()},
               "settings": settings}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, out)
    print(format_table(metrics))
    print(f"wrote {out}", file=sys.stderr)


def _versions() -> dict[str, str]:
    import torch
    import torch_fidelity

    return {"torch": torch.__version__, "torch_fidelity": torch_fidelity.__version__}


def run_recon(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    from mvq.evaluation import InceptionV3, evaluate_reconstruction
    from mvq.evaluation.datasets import evaluation_dataset
    from mvq.distributed import init_from_environment, rank_and_world_size
    from mvq.losses.perceptual import LPIPS
    from mvq.models.mqvae import MQVAE

    device = _device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = init_from_environment(device.type)
    try:
        rank, world_size = rank_and_world_size()
        inception = None if args.no_fid else InceptionV3(args.inception_weights).to(device)
        lpips = None if args.no_lpips else LPIPS(args.vgg_weights).to(device)
        model = MQVAE.from_pretrained(args.vae, map_location=device)
        dataset = evaluation_dataset(args.data, model.config.resolution, args.split)
        metrics = evaluate_reconstruction(model, dataset, inception=inception, lpips=lpips, num_images=args.n,
                                          batch_size=args.batch_size, device=device, num_workers=args.num_workers,
                                          progress=not args.no_progress)
        if rank == 0:
            settings = {"vae": str(args.vae), "data": str(args.data), "split": args.split, "n": args.n,
                        "resolution": model.config.resolution, "world_size": world_size,
                        "inception_weights": str(inception.weights_path) if inception is not None else None,
                        **_versions()}
            _write_results(args.out, "recon", metrics, settings)
    finally:
        if created:
            dist.destroy_process_group()
    return 0


def run_gen(args: argparse.Namespace) -> int:
    from mvq.evaluation import InceptionV3, evaluate_generation

    device = _device(args.device)
    inception = InceptionV3(args.inception_weights).to(device)
    metrics = evaluate_generation(args.samples, args.ref, inception, batch_size=args.batch_size, device=device,
                                  num_samples=args.n, resolution=args.resolution, isc_splits=args.isc_splits,
                                  kid=args.kid, kid_subset_size=args.kid_subset_size, num_workers=args.num_workers,
                                  progress=not args.no_progress)
    settings = {"samples": metrics.pop("samples"), "reference": metrics.pop("reference"),
                "inception_weights": metrics.pop("inception_weights"), "resolution": args.resolution,
                **_versions()}
    _write_results(args.out, "gen", metrics, settings)
    return 0


def run_stats(args: argparse.Namespace) -> int:
    import torch

    from mvq.evaluation import FID_IMAGE_COUNT, ImageSet, InceptionV3, run_inception, save_statistics, to_uint8
    from mvq.evaluation.datasets import evaluation_dataset
    from mvq.evaluation.images import evaluation_indices

    device = _device(args.device)
    inception = InceptionV3(args.inception_weights).to(device)
    path = Path(args.data)
    if path.suffix in (".yaml", ".yml"):
        dataset = evaluation_dataset(path, args.resolution, args.split)
        subset = torch.utils.data.Subset(dataset, evaluation_indices(len(dataset), args.n))
        loader = torch.utils.data.DataLoader(subset, batch_size=args.batch_size, num_workers=args.num_workers)
        batches = (to_uint8(batch["image"]) for batch in loader)
        total = len(subset)
    else:
        images = ImageSet(path, args.resolution, args.num_workers)
        batches, total = images.batches(args.batch_size, args.n), min(len(images), args.n or len(images))
    outputs = run_inception(batches, inception, device, progress=not args.no_progress, total=total, desc="stats")
    mu, sigma = outputs.gaussian.mean_and_covariance()
    n = outputs.num_images
    save_statistics(args.out, mu, sigma, num_images=n, source=str(args.data),
                    resolution=args.resolution if args.resolution else -1,
                    feature_extractor="torch-fidelity inception-v3-compat, 2048-d pool features")
    print(f"{n} images → {args.out}" + (f" (published FIDs use {FID_IMAGE_COUNT} samples against statistics of "
                                        "the full reference set)" if n < FID_IMAGE_COUNT else ""))
    return 0
