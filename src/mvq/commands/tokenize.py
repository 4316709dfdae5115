"""`mvq tokenize`: encode a dataset once with a trained MQ-VAE into a token store for stage 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenize", help="encode a dataset with an MQ-VAE into a token store",
        description="Encode a dataset once with a trained MQ-VAE into a token store (codes, positions, "
                    "labels) that stage-2 training reads. Resumable: rerun the same command after an "
                    "interruption. Under torchrun (or with RANK/WORLD_SIZE set) each rank writes its own "
                    "part of the store; the parts read as one.")
    parser.add_argument("--vae", required=True, metavar="DIR", help="pretrained MQ-VAE folder (save_pretrained)")
    parser.add_argument("--data", required=True, metavar="CONFIG_OR_FOLDER",
                        help="a YAML config (its data: section is used) or a folder of images")
    parser.add_argument("--out", required=True, metavar="STORE", help="token store folder to write")
    parser.add_argument("--split", choices=["train", "val"], default="train", help="dataset split (default: train)")
    parser.add_argument("--flip", action="store_true", help="also store horizontally flipped copies")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--num-workers", type=int, default=4, help="data loading processes (default: 4)")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    parser.set_defaults(func=run)


def build_tokenize_dataset(data: str | Path, split: str, resolution: int) -> Any:
    """The dataset to encode, at the MQ-VAE's resolution and with evaluation transforms.

    `data` is an image folder or a YAML file whose `data:` section is a DataConfig.
    Tokens are made once and reused every epoch, so no random augmentation is applied here.
    """
    import dataclasses

    from mvq.config import ConfigError, build_dataclass, load_yaml

    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"--data {data}: no such config file or image folder")
    from mvq.data import DataConfig, build_dataset, folder_dataset

    if path.is_dir():
        return folder_dataset(path, resolution, train=split == "train", augment=False)
    section = load_yaml(path).get("data")
    if not isinstance(section, dict):
        raise ConfigError(f"{path} has no 'data:' section to build the dataset from")
    config = build_dataclass(DataConfig, section, "data")
    if config.resolution != resolution:
        print(f"mvq tokenize: using resolution {resolution} (the MQ-VAE's) instead of the config's "
              f"{config.resolution}", file=sys.stderr)
        config = dataclasses.replace(config, resolution=resolution)
    return build_dataset(config, split, augment=False)


def _device(name: str, local_rank: int) -> torch.device:
    import torch

    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def run(args: argparse.Namespace) -> int:
    import os

    from mvq.data.token_store import distributed_rank, part_name, tokenize_dataset
    from mvq.models.mqvae import MQVAE

    rank, world_size = distributed_rank()
    device = _device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    model = MQVAE.from_pretrained(args.vae, map_location=device)
    dataset = build_tokenize_dataset(args.data, args.split, model.config.resolution)
    header = tokenize_dataset(
        model, dataset, args.out, flip=args.flip, batch_size=args.batch_size, num_workers=args.num_workers,
        rank=rank, world_size=world_size, device=device,
        source={"data": str(Path(args.data).resolve()), "split": args.split})
    part = f" ({part_name(rank, world_size)}: {header.part_sizes[rank]} rows)" if world_size > 1 else ""
    print(f"token store {args.out}: {header.count} items{part}, K={header.num_tokens} tokens on a "
          f"{header.grid_size}×{header.grid_size} grid, codebook {header.codebook_size}, "
          f"dtypes {dict(header.dtypes)}")
    return 0
