"""Lightning data modules: images for stage 1; both train through a resumable sampler, or from a
resumable stream of tar shards (`mvq.data.shards.ShardStream`)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from mvq.data import build_dataset
from mvq.data.shards import ShardStream
from mvq.training.sampler import ResumableSampler


class ResumableDataModule(L.LightningDataModule):
    """Loaders over `train_dataset` / `val_dataset` (set by `setup`), split across ranks.

    The training sampler is kept as `train_sampler` so a resumed run can skip the batches it
    already trained on (see TrainingStateMixin).
    """

    def __init__(self, data_config, seed: int = 0):
        super().__init__()
        self.config, self.seed = data_config, seed
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.train_sampler: ResumableSampler | None = None

    def _loader(self, dataset: Dataset, sampler: ResumableSampler, drop_last: bool) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if isinstance(self.train_dataset, ShardStream):
            self.train_dataset.rank, self.train_dataset.world_size = trainer.global_rank, trainer.world_size
            loader = self.train_dataset.loader()
        else:
            self.train_sampler = ResumableSampler(len(self.train_dataset), self.config.batch_size, seed=self.seed,
                                                  shuffle=True, rank=trainer.global_rank,
                                                  world_size=trainer.world_size)
            loader = self._loader(self.train_dataset, self.train_sampler, drop_last=True)
        self._apply_resume()
        return loader

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = ResumableSampler(len(self.val_dataset), 1, shuffle=False, rank=trainer.global_rank,
                                   world_size=trainer.world_size)
        return self._loader(self.val_dataset, sampler, drop_last=False)

    def set_epoch(self, epoch: int) -> None:
        """Before each training epoch: a stream of shards reads that epoch's order (a sampler is told by Lightning)."""
        if isinstance(self.train_dataset, ShardStream):
            self.train_dataset.set_epoch(epoch)

    def resume(self, epoch: int, batches_trained: int) -> None:
        """A run resumed in `epoch` after `batches_trained` batches in all: the loader skips what this epoch read.

        Set when the checkpoint is loaded, before the training loader exists; applied when it is made."""
        self._resume_at = (epoch, batches_trained)
        self._apply_resume()

    def _apply_resume(self) -> None:
        if getattr(self, "_resume_at", None) is None:
            return
        epoch, batches_trained = self._resume_at
        if isinstance(self.train_dataset, ShardStream) and self.train_dataset.rank is not None:
            per_epoch = self._batches_per_epoch(len(self.train_dataset) // self.config.batch_size)
            self.train_dataset.set_epoch(epoch)
            self.train_dataset.resume(epoch, batches_trained % per_epoch)
        elif self.train_sampler is not None:
            per_epoch = self._batches_per_epoch(self.train_sampler.per_rank // self.config.batch_size)
            self.train_sampler.skip_batches = batches_trained % per_epoch
        else:
            return  # applied when the training loader is made
        self._resume_at = None

    def _batches_per_epoch(self, batches: int) -> int:
        """The batches Lightning trains per epoch from a loader of `batches` (trainer.limit_train_batches)."""
        limit = self.trainer.limit_train_batches if self.trainer is not None else None
        if isinstance(limit, int):
            batches = min(batches, limit)
        elif isinstance(limit, float) and limit < 1:
            batches = int(batches * limit)
        return max(batches, 1)


class ImageDataModule(ResumableDataModule):
    """Image batches: `image` (B×3×R×R in [-1, 1]) and `label`.

    With `failure_log`, training files that fail to decode when read are recorded there (see
    `ImageFileDataset`); `UnreadableFilesReport` counts them at the end of every epoch.
    """

    def __init__(self, data_config, seed: int = 0, failure_log: Path | None = None):
        super().__init__(data_config, seed)
        self.failure_log = failure_log

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset = build_dataset(self.config, "train")
            self.val_dataset = build_dataset(self.config, "val")
            if hasattr(self.train_dataset, "failure_log"):
                self.train_dataset.failure_log = self.failure_log
