"""`mvq eval`: numbers for tokenizers (recon), for generated samples (gen), and reference statistics (stats)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mvq.commands.options import (MODEL_FORMS, add_data_overrides, add_keep_argument, add_num_workers_argument,
                                  check_keep_budget)

WEIGHTS_HELP = (": the file {name} (default: look in the torch hub cache, $TORCH_HOME/hub/checkpoints/); "
                "nothing is downloaded")


def _add_common(parser: argparse.ArgumentParser, out_default: str | None) -> None:
    parser.add_argument("--inception-weights", metavar="FILE",
                        help="torch-fidelity's Inception weights" + WEIGHTS_HELP.format(
                            name="weights-inception-2015-12-05-6726825d.pth"))
    parser.add_argument("--batch-size", type=int, default=50, help="images per forward pass (default: 50)")
    add_num_workers_argument(parser)
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    if out_default is not None:
        parser.add_argument("--out", default=out_default, metavar="JSON",
                            help=f"where to write the results (default: {out_default})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="rFID/PSNR/SSIM/LPIPS/codebook usage of a tokenizer; FID/IS of samples",
        description="Evaluate a tokenizer's reconstructions (recon; an MQ-VAE or a VQGAN), generated samples "
                    "(gen), or precompute reference statistics for FID (stats). See the README section "
                    "'Evaluation protocol'.")
    commands = parser.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    recon = commands.add_parser(
        "recon", help="reconstruction quality and codebook usage of an MQ-VAE or a VQGAN",
        description="rFID (reconstructions against their originals), PSNR, SSIM, LPIPS, codebook usage and "
                    "perplexity, and the mean keep-score of kept and masked cells. Under torchrun each rank "
                    "evaluates its share of the images and the results are combined.")
    recon.add_argument("--vae", required=True, metavar="MODEL", help="pretrained MQ-VAE or VQGAN: " + MODEL_FORMS)
    recon.add_argument("--data", required=True, metavar="CONFIG_OR_FOLDER",
                       help="a YAML config (its data: section) or a folder of images")
    recon.add_argument("--split", choices=["train", "val"], default="val", help="dataset split (default: val)")
    recon.add_argument("--n", type=int, default=None, metavar="N",
                       help="evaluate a seeded random subset of N images (default: all)")
    recon.add_argument("--lpips-net", choices=["vgg", "alex"], default="vgg",
                       help="LPIPS trunk: vgg (default; the training loss's) or alex (the LPIPS authors' default)")
    recon.add_argument("--lpips-weights", "--vgg-weights", dest="lpips_weights", metavar="FILE",
                       help="the LPIPS trunk's weights" + WEIGHTS_HELP.format(
                           name="vgg16-397923af.pth / alexnet-owt-7be5be79.pth, or what `mvq weights install` wrote"))
    add_keep_argument(recon)
    add_data_overrides(recon)
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
    gen.add_argument("--n", type=int, default=None, metavar="N",
                     help="use a seeded random subset of N ≥ 2 samples (default: all)")
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
    stats.add_argument("--n", type=int, default=None, metavar="N",
                       help="use a seeded random subset of N ≥ 2 images (default: all)")
    stats.add_argument("--resolution", type=int, default=None, metavar="R",
                       help="resize and centre-crop to R×R (default: the config's resolution, or the images' own)")
    add_data_overrides(stats)
    _add_common(stats, None)
    stats.set_defaults(func=run_stats)


def _check_settings(args: argparse.Namespace) -> None:
    """Counts and sizes of the command line, before anything is loaded: 0 must not quietly mean "all"."""
    from mvq.errors import UserError

    needs_covariance = args.eval_command != "recon" or not args.no_fid
    limits = [("n", "--n", 2 if needs_covariance else 1,
               " (FID needs two images for a covariance)" if needs_covariance else "", ", or left out for all images"),
              ("batch_size", "--batch-size", 1, "", ""), ("num_workers", "--num-workers", 0, "", ""),
              ("resolution", "--resolution", 1, "", ""), ("isc_splits", "--isc-splits", 1, "", ""),
              ("kid_subset_size", "--kid-subset-size", 2, " (KID compares pairs of images)", "")]
    for name, flag, minimum, reason, alternative in limits:
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise UserError(f"{flag} must be at least {minimum}{reason}{alternative}; got {flag} {value}")


def _check_output_file(path: str, inputs: list[str], suffix: str | None = None) -> None:
    """Refuse, before any work, an --out that cannot take the result: a folder, a wrong suffix, one of the
    command's inputs (it would be overwritten), or a place that cannot be written (its folder is made later)."""
    from pathlib import Path

    from mvq.storage.atomic import check_can_create
    from mvq.errors import UserError

    out = Path(path)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file path, such as {out / ('results' + (suffix or '.json'))}")
    if suffix is not None and out.suffix != suffix:
        raise UserError(f"--out {out}: the file must end in {suffix}")
    for source in inputs:
        if Path(source).exists() and out.exists() and out.resolve() == Path(source).resolve():
            raise UserError(f"--out {out} is this command's input {source}: writing the results there would "
                            "destroy it; choose another file")
    check_can_create(out.absolute().parent)


def _report(path: str, command: str, metrics: dict[str, Any], settings: dict[str, Any]) -> None:
    from mvq.evaluation.report import format_table, write_results

    write_results(path, f"mvq eval {command}", metrics, settings)
    print(format_table(metrics))
    print(f"wrote {path}", file=sys.stderr)


def _versions() -> dict[str, str]:
    import torch
    import torch_fidelity

    return {"torch": torch.__version__, "torch_fidelity": torch_fidelity.__version__}


def run_recon(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    from mvq.distributed import init_from_environment, rank_and_world_size, resolve_device
    from mvq.evaluation import InceptionV3, evaluate_reconstruction
    from mvq.data.build import dataset_from_path
    from mvq.losses.perceptual import LPIPS
    from mvq.models.tokenizer import load_tokenizer

    _check_settings(args)
    _check_output_file(args.out, [args.vae, args.data])
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = init_from_environment(device.type)
    try:
        rank, world_size = rank_and_world_size()
        model = load_tokenizer(args.vae, map_location=device)
        check_keep_budget(model, args.keep)
        dataset = dataset_from_path(args.data, args.split, model.config.resolution, args.overrides)
        inception = None if args.no_fid else InceptionV3(args.inception_weights).to(device)
        lpips = None if args.no_lpips else LPIPS(args.lpips_weights, net=args.lpips_net).to(device)
        metrics = evaluate_reconstruction(model, dataset, inception=inception, lpips=lpips, num_images=args.n,
                                          batch_size=args.batch_size, device=device, num_workers=args.num_workers,
                                          progress=not args.no_progress, keep=args.keep)
        if rank == 0:
            settings = {"vae": str(args.vae), "data": str(args.data), "split": args.split, "n": args.n,
                        "keep": None if args.keep is None else model.config.keep_count(args.keep),
                        "resolution": model.config.resolution, "world_size": world_size,
                        "inception_weights": str(inception.weights_path) if inception is not None else None,
                        "lpips_net": None if lpips is None else args.lpips_net,
                        "lpips_weights": None if lpips is None else str(lpips.weights_path),
                        **_versions()}
            _report(args.out, "recon", metrics, settings)
    finally:
        if created:
            dist.destroy_process_group()
    return 0


def run_gen(args: argparse.Namespace) -> int:
    from mvq.distributed import resolve_device
    from mvq.evaluation import InceptionV3
    from mvq.evaluation.generation import open_generation_inputs, score_generation

    # Every input is checked before the network is loaded, let alone run over the samples.
    _check_settings(args)
    _check_output_file(args.out, [args.samples, args.ref])
    device = resolve_device(args.device)
    inputs = open_generation_inputs(args.samples, args.ref, feature_dim=InceptionV3.feature_dim, num_samples=args.n,
                                    resolution=args.resolution, kid=args.kid, num_workers=args.num_workers)
    inception = InceptionV3(args.inception_weights).to(device)
    metrics = score_generation(inputs, inception, batch_size=args.batch_size, device=device,
                               isc_splits=args.isc_splits, kid_subset_size=args.kid_subset_size,
                               progress=not args.no_progress)
    if metrics.get("inception_score_unavailable"):
        print(metrics["inception_score_unavailable"], file=sys.stderr)
    settings = {"samples": metrics.pop("samples"), "reference": metrics.pop("reference"),
                "inception_weights": metrics.pop("inception_weights"), "resolution": args.resolution,
                **_versions()}
    _report(args.out, "gen", metrics, settings)
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from mvq.distributed import resolve_device
    from mvq.evaluation import FID_IMAGE_COUNT, InceptionV3, save_statistics
    from mvq.evaluation.generation import ReferenceImages, image_statistics

    _check_settings(args)
    _check_output_file(args.out, [args.data], suffix=".npz")
    device = resolve_device(args.device)
    images = ReferenceImages(args.data, resolution=args.resolution, split=args.split, num_images=args.n,
                             num_workers=args.num_workers, overrides=args.overrides)
    inception = InceptionV3(args.inception_weights).to(device)
    mu, sigma, n = image_statistics(images, inception, batch_size=args.batch_size, device=device,
                                    progress=not args.no_progress)
    save_statistics(args.out, mu, sigma, num_images=n, source=str(args.data),
                    resolution=args.resolution if args.resolution else -1,
                    feature_extractor="torch-fidelity inception-v3-compat, 2048-d pool features")
    print(f"{n} images → {args.out}" + (f" (published FIDs use {FID_IMAGE_COUNT} samples against statistics of "
                                        "the full reference set)" if n < FID_IMAGE_COUNT else ""))
    return 0
