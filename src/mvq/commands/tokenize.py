"""`mvq tokenize`: encode a dataset once with a trained tokenizer (MQ-VAE or VQGAN) into a token store for stage 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from mvq.commands.options import (MODEL_FORMS, add_data_overrides, add_keep_argument, add_num_workers_argument,
                                  check_keep_budget)
from mvq.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenize", help="encode a dataset with an MQ-VAE or a VQGAN into a token store",
        description="Encode a dataset once with a trained MQ-VAE (or VQGAN: every cell a token, in raster "
                    "order) into a token store (codes, positions, labels) that stage-2 training reads. Resumable: rerun the same command after an "
                    "interruption. Under torchrun (or with RANK/WORLD_SIZE set) each rank writes its own "
                    "part of the store; the parts read as one.")
    parser.add_argument("--vae", required=True, metavar="MODEL",
                        help="pretrained MQ-VAE or VQGAN: " + MODEL_FORMS)
    parser.add_argument("--data", required=True, metavar="CONFIG_OR_FOLDER",
                        help="a YAML config (its data: section is used) or a folder of images")
    parser.add_argument("--out", required=True, metavar="STORE", help="token store folder to write")
    parser.add_argument("--split", choices=["train", "val"], default="train", help="dataset split (default: train)")
    parser.add_argument("--flip", action="store_true", help="also store horizontally flipped copies")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    add_num_workers_argument(parser)
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    add_keep_argument(parser)
    parser.add_argument("--order", choices=["raster", "rank"], default="raster",
                        help="how each image's tokens are listed: by position (raster, the paper's; default) or "
                             "most important first (rank: every prefix is the image at a smaller budget, so a "
                             "Stackformer trained on it can stop after any number of tokens)")
    parser.add_argument("--quality-target", metavar="TARGET",
                        help="an MQ-VAE's budget per image: the fewest cells whose reconstruction meets TARGET, "
                             "psnr=DB (at least) or lpips=DISTANCE (at most, real LPIPS-VGG weights), found by "
                             "bisection over the model's ranking (at most --keep cells, default all); writes a "
                             "store with a length per row")
    add_data_overrides(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvq.storage.atomic import check_can_create
    from mvq.data import build
    from mvq.data.token_store import part_name
    from mvq.distributed import rank_and_world_size, resolve_device
    from mvq.models.tokenizer import load_tokenizer
    from mvq.inference.tokenizing import tokenize_dataset

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"{args.out} is a file, not a token store folder: give a folder path")
    check_can_create(args.out)  # before any model or data is read
    rank, world_size = rank_and_world_size()
    device = resolve_device(args.device)
    model = load_tokenizer(args.vae, map_location=device)
    check_keep_budget(model, args.keep)
    budget = quality_budget(model, args.quality_target, args.keep, device) if args.quality_target else None
    dataset = build.dataset_from_path(args.data, args.split, model.config.resolution, args.overrides)
    header = tokenize_dataset(
        model, dataset, args.out, flip=args.flip, batch_size=args.batch_size, num_workers=args.num_workers,
        rank=rank, world_size=world_size, device=device,
        source={"data": str(Path(args.data).resolve()), "split": args.split,
                **({"overrides": args.overrides} if args.overrides else {}),
                **({"quality_target": args.quality_target} if args.quality_target else {})},
        keep=None if budget else args.keep, budget=budget, order=args.order,
        max_tokens=budget and (model.config.keep_count(args.keep) if args.keep else model.config.num_cells))
    part = f" ({part_name(rank, world_size)}: {header.part_sizes[rank]} rows)" if world_size > 1 else ""
    if header.variable_length:
        print(f"a budget per image for {args.quality_target}: rows of up to {header.num_tokens} tokens")
    print(f"token store {args.out}: {header.count} items{part}, K={header.num_tokens} tokens on a "
          f"{header.grid_size}×{header.grid_size} grid, codebook {header.codebook_size}, "
          f"dtypes {dict(header.dtypes)}")
    return 0


def quality_budget(model, target: str, keep, device):
    """Images → the fewest kept cells meeting `target` per image (at most `keep` cells, default all)."""
    from mvq.models.keep_budget import parse_quality_target, smallest_keep

    if not hasattr(model.config, "keep_count"):
        raise UserError("--quality-target needs an MQ-VAE: a VQGAN keeps every cell")
    target_fn = parse_quality_target(target, lpips=lambda: _lpips(device))
    high = model.config.keep_count(keep) if keep is not None else model.config.num_cells
    return lambda images: smallest_keep(model, images, target_fn, high=high)[0]


def _lpips(device):
    from mvq.losses.perceptual import LPIPS

    return LPIPS(net="vgg").to(device)
