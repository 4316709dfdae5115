"""Encoding a dataset once with a tokenizer (MQ-VAE or VQGAN) into a token store: the job behind `mvq tokenize`.

The store's file format (header, parts, writer, reader) is `mvq.data.token_store`; this module
runs the model over the data and feeds the writer, one contiguous block of the dataset per rank.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from mvq.config import dataclass_to_dict
from mvq.data.token_store import (TokenPartWriter, TokenStoreHeader, create_store, part_name, shard_bounds,
                                  store_dtypes)
from mvq.distributed import rank_and_world_size
from mvq.errors import InvalidInputError
from mvq.storage.locks import locked
from mvq.models.pretrained import weights_fingerprint


def declared_num_classes(dataset: Any) -> int | None:
    """The number of classes a dataset declares (`num_classes` or `classes`), or None."""
    while dataset is not None:
        n = getattr(dataset, "num_classes", None)
        if isinstance(n, int):
            return n
        classes = getattr(dataset, "classes", None)
        if classes is not None:
            return len(classes)
        dataset = getattr(dataset, "dataset", None)  # look through Subset-like wrappers
    return None


def declared_class_names(dataset: Any) -> list[str] | None:
    """The names of a dataset's classes (its `classes`, when they are strings), or None."""
    while dataset is not None:
        classes = getattr(dataset, "classes", None)
        if classes is not None:
            names = [str(c) for c in classes]
            return names if names and all(isinstance(c, str) for c in classes) else None
        dataset = getattr(dataset, "dataset", None)
    return None


def tokenize_dataset(model: torch.nn.Module, dataset: Dataset, out: str | os.PathLike, *,
                     flip: bool = False, batch_size: int = 64, num_workers: int = 0,
                     rank: int | None = None, world_size: int | None = None,
                     device: str | torch.device = "cpu", source: Mapping[str, Any] | None = None,
                     progress: bool = True, keep: int | None = None,
                     budget: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     max_tokens: int | None = None, order: str = "raster") -> TokenStoreHeader:
    """Encode `dataset` with an MQ-VAE or a VQGAN into the store at `out`; this rank writes its part.

    `model` needs `config` (codebook_size, grid_size, num_tokens, resolution) and
    `tokenize(images) -> (codes, positions)`; dataset items are dicts with `image` (3×R×R in
    [-1, 1]) and `label`. With `flip`, row 2i is image i and row 2i + 1 its horizontal mirror.
    A part already (partly) written is continued from its recorded progress; with the same
    batch size the finished store is identical to one written without interruption.
    Without `rank`/`world_size` they come from `mvq.distributed.rank_and_world_size`.

    An MQ-VAE may keep another budget than its K: `keep` (one count for every image), or `budget`
    (images → one count per image, at most `max_tokens`, e.g. `mvq.models.keep_budget.smallest_keep`
    for a quality target), which writes a variable-length store. `order="rank"` lists each image's tokens
    most important first (an MQ-VAE's `tokenize(order=)`), so that every prefix is a smaller budget.
    """
    if rank is None or world_size is None:
        rank, world_size = rank_and_world_size()
    if batch_size < 1:
        raise InvalidInputError(f"batch size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise InvalidInputError(f"the number of data loading workers must be 0 or more, got {num_workers}")
    config = model.config
    if (keep is not None or budget is not None or order != "raster") and not hasattr(config, "keep_count"):
        raise InvalidInputError("a token budget or order needs an MQ-VAE: a VQGAN keeps every cell, in raster order")
    if budget is not None and (keep is not None or max_tokens is None):
        raise InvalidInputError("a budget per image takes max_tokens (the longest row) and no fixed keep")
    num_tokens = int(config.num_tokens) if keep is None and budget is None else (
        config.keep_count(keep) if budget is None else int(max_tokens))
    copies = 2 if flip else 1
    num_images = len(dataset)
    bounds = [shard_bounds(num_images, r, world_size) for r in range(world_size)]
    num_classes = declared_num_classes(dataset)
    vae_config = dataclass_to_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    header = TokenStoreHeader(
        codebook_size=int(config.codebook_size), grid_size=int(config.grid_size),
        num_tokens=num_tokens, num_classes=num_classes,
        part_sizes=tuple(copies * (stop - start) for start, stop in bounds),
        dtypes=store_dtypes(int(config.codebook_size), int(config.grid_size) ** 2, num_classes,
                            variable_length=budget is not None),
        variable_length=budget is not None, order=order,
        flip=flip, vae={"config": vae_config, "weights_sha256": weights_fingerprint(model)},
        source={"num_images": num_images, **({"class_names": declared_class_names(dataset)}
                                             if declared_class_names(dataset) else {}),
                **({"keep": num_tokens} if keep is not None else {}), **(source or {})},
    )
    create_store(out, header)
    # One writer per part: a second `mvq tokenize` into the same store is refused, not interleaved.
    with locked(Path(out) / f".{part_name(rank, world_size)}.lock", f"{out} is being written by another mvq "
                "tokenize; wait for it to finish, or choose another --out", remove=True):
        _write_part(model, dataset, out, header, rank, bounds[rank], copies, flip, batch_size, num_workers, device,
                    progress, keep, budget, order)
    return header


def _write_part(model: torch.nn.Module, dataset: Dataset, out: str | os.PathLike, header: TokenStoreHeader,
                rank: int, bounds: tuple[int, int], copies: int, flip: bool, batch_size: int, num_workers: int,
                device: str | torch.device, progress: bool, keep: int | None = None,
                budget: Callable[[torch.Tensor], torch.Tensor] | None = None, order: str = "raster") -> None:
    """Encode this rank's block of the dataset into its part, continuing from the part's recorded progress."""
    from tqdm.auto import tqdm

    config = model.config
    world_size = header.world_size
    writer = TokenPartWriter(out, header, rank)
    start, stop = bounds
    first = start + writer.done // copies
    bar = tqdm(total=stop - start, initial=first - start, unit="img", disable=not progress or rank != 0,
               desc=f"tokenize {part_name(rank, world_size)}" if world_size > 1 else "tokenize")
    if first < stop:
        loader = DataLoader(Subset(dataset, range(first, stop)), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers)
        model.eval()
        resolution = getattr(config, "resolution", None)
        with torch.inference_mode():
            for batch in loader:
                images, labels = batch["image"].to(device), torch.as_tensor(batch["label"])
                if resolution is not None and tuple(images.shape[1:]) != (3, resolution, resolution):
                    raise InvalidInputError(f"the dataset gives images of shape {tuple(images.shape[1:])}, "
                                            f"the tokenizer expects 3×{resolution}×{resolution}: "
                                            f"set the data resolution to {resolution}")
                if flip:  # original and mirror of each image side by side: rows 2i, 2i + 1
                    images = torch.stack([images, images.flip(-1)], dim=1).flatten(0, 1)
                    labels = labels.repeat_interleave(2)
                options = {} if order == "raster" else {"order": order}  # a VQGAN takes no order
                if budget is None:
                    codes, positions = model.tokenize(images, **options) if keep is None else model.tokenize(
                        images, keep=keep, **options)
                    writer.append(codes, positions, labels)
                else:
                    counts = budget(images).clamp_max(header.num_tokens)
                    codes, positions = model.tokenize(images, keep=counts, **options)
                    pad = header.num_tokens - codes.shape[1]  # rows as long as the store's longest
                    writer.append(F.pad(codes, (0, pad), value=-1), F.pad(positions, (0, pad), value=-1), labels,
                                  lengths=counts)
                bar.update(len(batch["label"]))
    bar.close()
