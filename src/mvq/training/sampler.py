"""A training sampler that makes runs resumable exactly.

The order of epoch e is a permutation drawn from (seed, e), split across ranks; a run resumed
in the middle of an epoch skips the batches it has already trained on, so the resumed run sees
the same batches in the same order as one that was never interrupted.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from mvq.config import ConfigError


class ResumableSampler(Sampler[int]):
    """This rank's share of a (seed, epoch) permutation; `skip_batches` resumes in the middle of an epoch."""

    def __init__(self, length: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        self.length, self.batch_size, self.seed, self.shuffle = length, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.skip_batches = 0  # set before iteration when resuming mid-epoch; used once
        self.per_rank = length // world_size  # equal shares keep ranks in step (drop the remainder)
        if self.per_rank < batch_size:
            raise ConfigError(f"the training set has {length} items: too few for batch size {batch_size} "
                              f"on {world_size} device(s)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank  # the full epoch, also when resuming (the loop counts the batches already done)

    def _skipped_items(self) -> int:
        return min(self.skip_batches * self.batch_size, self.per_rank)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g)
        else:
            order = torch.arange(self.length)
        mine = order[self.rank: self.per_rank * self.world_size: self.world_size]
        start = self._skipped_items()
        self.skip_batches = 0
        return iter(mine[start:].tolist())
