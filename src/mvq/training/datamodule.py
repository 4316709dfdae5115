"""Lightning data modules: images for stage 1; both train through a resumable sampler."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from mvq.data import build_dataset
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
        self.train_sampler = ResumableSampler(len(self.train_dataset), self.config.batch_size, seed=self.seed,
                                              shuffle=True, rank=trainer.global_rank, world_size=trainer.world_size)
        return self._loader(self.train_dataset, self.train_sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = ResumableSampler(len(self.val_dataset), 1, shuffle=False, rank=trainer.global_rank,
                                   world_size=trainer.world_size)
        return self._loader(self.val_dataset, sampler, drop_last=False)


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
