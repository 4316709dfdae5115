"""`mvq shards`: write a dataset as WebDataset tar shards, which training reads as a stream (data.dataset: shards)."""

from __future__ import annotations

import argparse

from mvq.commands.options import add_data_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shards", help="write a dataset as tar shards for streaming (WebDataset)",
        description="Write the train and val splits of a dataset as WebDataset tar shards: OUT/train/shard-000000.tar, "
                    "..., each split with a shards.json that counts its samples. Image files are stored as they "
                    "are (training still crops and flips them); torchvision's datasets and the synthetic shapes as "
                    "PNGs at the config's resolution. Train on them with data.dataset=shards data.root=OUT: every "
                    "sample once per epoch across all GPUs and loading workers, resumable to the sample.")
    parser.add_argument("--data", required=True, metavar="CONFIG_OR_FOLDER",
                        help="a YAML config (its data: section) or a folder of images (then --resolution)")
    parser.add_argument("--out", required=True, metavar="DIR", help="new folder for the shards")
    parser.add_argument("--split", choices=["train", "val", "both"], default="both",
                        help="which split to write (default: both)")
    parser.add_argument("--samples-per-shard", type=int, default=1000, metavar="N",
                        help="samples in each tar file (default: 1000; ImageNet's 1.28M make 1282 shards of "
                             "about 110 MB)")
    parser.add_argument("--resolution", type=int, default=None, metavar="R",
                        help="for a folder of images: the resolution it is checked at (its files are stored whole)")
    add_data_overrides(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mvq.data.build import dataset_from_path
    from mvq.data.shards import write_shards
    from mvq.errors import UserError

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new --out (shards are never written over)")
    if args.samples_per_shard < 1:
        raise UserError(f"--samples-per-shard must be at least 1, got {args.samples_per_shard}")
    splits = ["train", "val"] if args.split == "both" else [args.split]
    for split in splits:
        dataset = dataset_from_path(args.data, split, args.resolution, args.overrides)
        index = write_shards(dataset, out / split, args.samples_per_shard,
                             source={"data": str(Path(args.data).resolve()), "split": split,
                                     "overrides": list(args.overrides)})
        print(f"{split}: {index['num_samples']} samples in {len(index['shards'])} shards → {out / split}")
    print(f"train on them with: data.dataset=shards data.root={out}")
    return 0
