"""A dataset of image files with optional class labels."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from mvq.data.images import SkippedFilesWarning, load_rgb, relative_names
from mvq.data.transforms import ImageTransform

# How many following files a failing item may fall back on before giving up.
MAX_FALLBACKS = 16


class ImageFileDataset(Dataset):
    """Items {"image": 3×R×R float tensor in [-1, 1], "label": int (-1 without classes)}.

    `files` were checked when the dataset was built (see `mvq.data.images.scan_images`);
    `skipped` lists the (path, reason) pairs that were left out. Should a file still fail to
    decode when it is read, a warning names it and the next file is returned instead, so one
    bad file never stops a training run; with `failure_log` set (training sets it to a file of
    its run folder) the file and the reason are also appended there, one line each, from every
    data-loading process, for the run's end-of-epoch count.
    """

    failure_log: Path | None = None

    def __init__(self, base: str | os.PathLike, files: Sequence[Path], labels: Sequence[int] | None,
                 transform: ImageTransform, classes: Sequence[str] = (),
                 skipped: Sequence[tuple[Path, str]] = ()):
        if labels is not None and len(labels) != len(files):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.base = Path(base)
        self._names = relative_names(files, self.base)
        self._labels = np.full(len(files), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        self.transform = transform
        self.classes = list(classes)
        self.skipped = list(skipped)

    def __len__(self) -> int:
        return len(self._names)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def path(self, index: int) -> Path:
        return self.base / os.fsdecode(self._names[index])

    @property
    def files(self) -> list[Path]:
        return [self.path(i) for i in range(len(self))]

    def _record_failure(self, path: Path, exc: Exception) -> None:
        if self.failure_log is None:
            return
        line = f"{path}\t{' '.join(str(exc).split())}\n".encode()
        with open(self.failure_log, "ab") as handle:  # one small append: whole lines from concurrent workers
            handle.write(line)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        for offset in range(min(MAX_FALLBACKS, len(self))):
            current = (index + offset) % len(self)
            try:
                image = load_rgb(self.path(current))
            except Exception as exc:  # a file that changed or slipped through a header-only check
                warnings.warn(SkippedFilesWarning(
                    f"cannot read {self.path(current)} ({exc}); using the next image instead"))
                self._record_failure(self.path(current), exc)
                continue
            return {"image": self.transform(image), "label": int(self._labels[current])}
        raise RuntimeError(f"{MAX_FALLBACKS} consecutive files from {self.path(index)} on cannot be read; "
                           "check the dataset folder")
