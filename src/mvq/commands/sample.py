"""`mvq sample`: images from a trained Stackformer and its MQ-VAE → PNGs and one uint8 `.npz`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _top_k(value: str) -> int | None:
    k = int(value)
    if k < 0:
        raise argparse.ArgumentTypeError("top-k must be 0 (off) or positive")
    return k or None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample", help="sample images from a Stackformer + MQ-VAE",
        description="Sample images with a trained Stackformer and decode them with its MQ-VAE. Writes "
                    "OUT/images/NNNNNN.png and OUT/samples.npz (arr_0: uint8 N×R×R×3, the layout FID "
                    "evaluators read; labels: the class of each image). A seed gives the same images "
                    "whatever the batch size.")
    parser.add_argument("--stackformer", required=True, metavar="DIR", help="pretrained Stackformer folder")
    parser.add_argument("--vae", required=True, metavar="DIR", help="pretrained MQ-VAE folder it was trained on")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--batch-size", type=int, default=16, help="images sampled at once (default: 16)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--labels", type=int, nargs="+", metavar="L",
                       help="class labels, repeated cyclically to --n images (class-conditional models)")
    group.add_argument("--classes-balanced", action="store_true",
                       help="labels 0, 1, ..., C-1, 0, 1, ...: every class equally often")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--temperature", type=float, default=1.0, help="code temperature (default: 1.0)")
    parser.add_argument("--top-k", type=_top_k, default=100, help="code top-k, 0 = off (default: 100)")
    parser.add_argument("--top-p", type=float, default=0.95, help="code top-p, 1 = off (default: 0.95)")
    parser.add_argument("--position-temperature", type=float, default=1.0, help="position temperature (default: 1.0)")
    parser.add_argument("--position-top-k", type=_top_k, default=10, help="position top-k, 0 = off (default: 10)")
    parser.add_argument("--position-top-p", type=float, default=0.95, help="position top-p, 1 = off (default: 0.95)")
    parser.add_argument("--cfg-scale", type=float, default=1.0,
                        help="classifier-free guidance scale; 1 = off (needs a model trained with class_dropout)")
    parser.add_argument("--no-raster-constraint", dest="raster_constraint", action="store_false",
                        help="let positions come in any order (only repeats are forbidden)")
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help="recompute the whole prefix every step (slow; for checking)")
    parser.add_argument("--no-png", dest="png", action="store_false", help="write only the .npz")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out folder (its old contents go once the new samples are complete)")
    parser.add_argument("--allow-tokenizer-mismatch", action="store_true",
                        help="sample even if the Stackformer records a different MQ-VAE than --vae (warns)")
    parser.set_defaults(func=run)


def sampling_config(args: argparse.Namespace):
    """The validated sampling settings of the command line."""
    from mvq.models.sampling import SamplingConfig

    return SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          position_temperature=args.position_temperature, position_top_k=args.position_top_k,
                          position_top_p=args.position_top_p, cfg_scale=args.cfg_scale,
                          raster_constraint=args.raster_constraint, use_cache=args.use_cache)


def _labels(args: argparse.Namespace, num_classes: int) -> list[int] | None:
    from mvq.models.sampling import SamplingError
    from mvq.pipeline import balanced_labels

    if not num_classes:
        if args.labels or args.classes_balanced:
            raise SamplingError("the Stackformer is unconditional: --labels and --classes-balanced do not apply")
        return None
    if args.labels:
        return [args.labels[i % len(args.labels)] for i in range(args.n)]
    if args.classes_balanced:
        return balanced_labels(args.n, num_classes)
    raise SamplingError(f"the Stackformer is class-conditional ({num_classes} classes): "
                        f"pass --labels L ... or --classes-balanced")


def run(args: argparse.Namespace) -> None:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from mvq.atomic import atomic_directory, check_writable_destination
    from mvq.distributed import resolve_device
    from mvq.evaluation.npz_writer import NpzImageWriter
    from mvq.models.sampling import SamplingError
    from mvq.pipeline import MVQPipeline

    if args.n < 1 or args.batch_size < 1:
        raise SamplingError("--n and --batch-size must be at least 1")
    sampling = sampling_config(args)
    check_writable_destination(args.out, args.overwrite)  # refuse before loading anything
    pipe = MVQPipeline.from_pretrained(args.stackformer, args.vae, device=resolve_device(args.device),
                                       allow_tokenizer_mismatch=args.allow_tokenizer_mismatch)
    labels = _labels(args, pipe.num_classes)

    out = Path(args.out)
    with atomic_directory(out, overwrite=args.overwrite) as folder:
        image_dir = folder / "images"
        if args.png:
            image_dir.mkdir()
        with NpzImageWriter(folder / "samples.npz", args.n, pipe.vae.config.resolution) as npz, \
                tqdm(total=args.n, desc="sampling", unit="img") as progress:
            for start, images in pipe.batches(args.n, labels, seed=args.seed, batch_size=args.batch_size,
                                              sampling=sampling):
                if args.png:
                    for offset, image in enumerate(images):
                        Image.fromarray(image).save(image_dir / f"{start + offset:06d}.png")
                npz.write(images)
                progress.update(len(images))
            if labels is not None:
                npz.add("labels", np.asarray(labels, dtype=np.int64))
    print(f"wrote {args.n} images to {out / 'samples.npz'}" + (f" and {out / 'images'}" if args.png else ""))
