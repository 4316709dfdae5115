"""Writing an image-array `.npz` (`arr_0`: uint8 N×R×R×3) batch by batch.

The evaluators' layout, as `np.savez` writes it (stored, uncompressed), but streamed: the
`.npy` header is written for the final shape first and each batch's bytes follow, so 50,000
samples at 256 px (~10 GB) never sit in memory at once. `mvq.evaluation.images` reads it back
the same way. Members carry a fixed timestamp, so the same images give the same bytes whenever
(and on however many processes) they were sampled.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from types import TracebackType

import numpy as np

# Zip members' modification time: the earliest a zip can store, so the archive depends on its contents only.
FIXED_TIMESTAMP = (1980, 1, 1, 0, 0, 0)


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIMESTAMP)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


class NpzImageWriter:
    """`with NpzImageWriter(path, count, resolution) as w: w.write(batch) ...; w.add("labels", array)`."""

    def __init__(self, path: str | os.PathLike, count: int, resolution: int):
        self.path = Path(path)
        self.shape = (count, resolution, resolution, 3)
        self.written = 0
        self._extra: dict[str, np.ndarray] = {}
        self._archive = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._member = None
        try:
            self._member = self._archive.open(_member("arr_0.npy"), "w", force_zip64=True)
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": self.shape}
            np.lib.format.write_array_header_1_0(self._member, header)
        except BaseException:  # no open archive (or half a file) left behind
            self._abandon()
            raise

    def write(self, images: np.ndarray) -> None:
        """Append uint8 images B×R×R×3."""
        if images.dtype != np.uint8 or images.shape[1:] != self.shape[1:]:
            raise ValueError(f"expected uint8 images B×{'×'.join(map(str, self.shape[1:]))}, got "
                             f"{images.dtype} {images.shape}")
        if self.written + len(images) > self.shape[0]:
            raise ValueError(f"more than the {self.shape[0]} announced images")
        self._member.write(np.ascontiguousarray(images).tobytes())
        self.written += len(images)

    def add(self, name: str, array: np.ndarray) -> None:
        """A small extra array (e.g. `labels`), stored beside `arr_0` when the file is closed."""
        self._extra[name] = np.asarray(array)

    def close(self) -> None:
        self._member.close()
        try:
            if self.written != self.shape[0]:
                raise ValueError(f"{self.path}: {self.written} of the {self.shape[0]} announced images were written")
            for name, array in self._extra.items():
                with self._archive.open(_member(f"{name}.npy"), "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        finally:
            self._archive.close()

    def __enter__(self) -> "NpzImageWriter":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:  # leave no half-written archive that looks complete
            self._abandon()

    def _abandon(self) -> None:
        """Close everything and delete the unfinished file."""
        try:
            if self._member is not None:
                self._member.close()
        finally:
            self._archive.close()
            self.path.unlink(missing_ok=True)
