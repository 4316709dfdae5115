"""The output folder of `mvq sample`: shared by several processes, resumable after an interruption.

While a run is unfinished its folder holds a state folder, `.sampling/`, with

    request.json          what is being sampled (models' weight fingerprints, n, seed, labels,
                          sampling settings, precision, PNGs or not): the run's identity
    shards/START-STOP.npy uint8 images of samples START..STOP-1, one file per finished batch

and `images/NNNNNN.png`. Every process samples batches of the indices no shard covers yet and
writes their PNGs, then their shard (atomically, so a shard on disk is a finished batch).
Process 0 finally streams the shards in index order into `samples.npz` and removes the state
folder. Running the same request again on an unfinished folder **resumes** it: only the
missing indices are sampled, with the same per-image seeds, so the result is the one an
uninterrupted run gives, whatever the batch size or number of processes of either run. A
different request on an unfinished folder is refused. A non-empty folder that is not an
unfinished run is refused unless `--overwrite`; then the run is built in a hidden sibling
folder that replaces it as a whole once complete (a rerun with `--overwrite` resumes that sibling).

Process 0 holds an OS lock (`locked`, the file `.OUT.lock` beside the folder) for the whole
run, so a second `mvq sample` on the same --out is refused instead of writing shards of its own
batch size among this run's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Sequence

import numpy as np

from mvq.storage.atomic import (atomic_save_npy, atomic_write, atomic_write_json, check_writable_destination, npy_is_complete,
                        refuse_inputs_inside, refuse_working_folder, remove_stale_temporaries, replace_directory)
from mvq.errors import UserError
from mvq.evaluation.npz_writer import NpzImageWriter
from mvq.storage.locks import locked as hold_lock

STATE = ".sampling"
_SHARD_NAME = re.compile(r"^(\d{8})-(\d{8})\.npy$")


@dataclass(frozen=True)
class SampleFolder:
    """Where a run writes (`work`) and where its result ends up (`out`; the same folder unless replacing)."""

    out: Path
    work: Path
    resume: bool

    @property
    def replaces(self) -> bool:
        return self.work != self.out

    @property
    def state(self) -> Path:
        return self.work / STATE

    @property
    def shards(self) -> Path:
        return self.state / "shards"

    @property
    def images(self) -> Path:
        return self.work / "images"


def _staging_sibling(out: Path) -> Path:
    return out.parent / f".{out.name}.sampling"


def _recorded_request(folder: Path) -> dict | None:
    path = folder / STATE / "request.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # unreadable: a different request


def check_destination(out: str | os.PathLike, overwrite: bool, inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Refuse, before any model is loaded, a file or a non-empty folder that is no unfinished run, and a
    folder that holds the models (`inputs`)."""
    if _recorded_request(Path(out)) is None:
        check_writable_destination(out, overwrite, inputs=inputs)
    else:  # an unfinished run: resumed (or, with overwrite, replaced) rather than refused
        refuse_inputs_inside(out, inputs)


def locked(out: str | os.PathLike) -> ContextManager[None]:
    """Hold the lock of the output folder `out` while the block runs (process 0, for the whole run)."""
    folder = Path(out).resolve()  # "." and "out/" name their folder too
    return hold_lock(folder.parent / f".{folder.name}.lock", f"{out} is in use by another mvq sample; wait for it "
                                                             "to finish, or choose another --out", remove=True)


def _differences(recorded: dict, request: dict) -> list[str]:
    return sorted(key for key in set(recorded) | set(request) if recorded.get(key) != request.get(key))


def plan(out: str | os.PathLike, request: dict[str, Any], overwrite: bool) -> SampleFolder:
    """Decide, without writing anything, where this run writes and whether it resumes one."""
    out = Path(out).absolute()  # "." has a parent to put a staging sibling in
    check_destination(out, overwrite)
    if not out.exists() or not any(out.iterdir()):
        return SampleFolder(out, out, resume=False)
    recorded = _recorded_request(out)
    if recorded == request:
        return SampleFolder(out, out, resume=True)
    if not overwrite:  # an unfinished run of another request (the check above passed only for that)
        raise UserError(f"{out} holds an unfinished sampling run of a different request (differs in: "
                        f"{', '.join(_differences(recorded, request))}): rerun that command to finish it, choose "
                        "another --out, or pass --overwrite to replace it")
    refuse_working_folder(out)
    sibling = _staging_sibling(out)
    return SampleFolder(out, sibling, resume=_recorded_request(sibling) == request)


def prepare(folder: SampleFolder, request: dict[str, Any], png: bool) -> None:
    """Create the working folder and its state (process 0 only, before any process samples)."""
    if folder.replaces and not folder.resume and folder.work.exists():
        shutil.rmtree(folder.work)  # our own staging folder, left by a run of another request
    folder.shards.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder.shards)
    if png:
        folder.images.mkdir(exist_ok=True)
    if not folder.resume:
        atomic_write_json(folder.state / "request.json", request)


def finished_ranges(folder: SampleFolder, n: int) -> list[tuple[int, int]]:
    """The sample ranges [start, stop) whose shards are on disk and whole, in index order.

    A shard that does not hold its batch (cut short by a full disk, say) does not count: its
    samples are drawn again, and the new shard replaces it.
    """
    ranges = []
    for path in folder.shards.iterdir() if folder.shards.is_dir() else []:
        match = _SHARD_NAME.match(path.name)
        if match:
            start, stop = int(match[1]), int(match[2])
            if 0 <= start < stop <= n and npy_is_complete(path, rows=stop - start, dtype=np.uint8):
                ranges.append((start, stop))
    return sorted(ranges)


def missing_batches(finished: Sequence[tuple[int, int]], n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batches [start, stop) of at most `batch_size` samples covering every index no finished range covers."""
    covered = np.zeros(n, dtype=bool)
    for start, stop in finished:
        covered[start:stop] = True
    batches = []
    index = 0
    while index < n:
        if covered[index]:
            index += 1
            continue
        stop = index
        while stop < n and not covered[stop] and stop - index < batch_size:
            stop += 1
        batches.append((index, stop))
        index = stop
    return batches


def share(batches: Sequence[tuple[int, int]], rank: int, world_size: int) -> list[tuple[int, int]]:
    """This process's batches: every `world_size`-th one, starting at `rank`."""
    return list(batches[rank::world_size])


def write_batch(folder: SampleFolder, start: int, images: np.ndarray, png: bool) -> None:
    """Save a finished batch: its PNGs first, then its shard (whose presence marks the batch done)."""
    from PIL import Image

    if png:
        for offset, image in enumerate(images):
            atomic_write(folder.images / f"{start + offset:06d}.png",
                         lambda tmp, image=image: Image.fromarray(image).save(tmp, format="PNG"))
    atomic_save_npy(folder.shards / f"{start:08d}-{start + len(images):08d}.npy", images)


def finish(folder: SampleFolder, n: int, resolution: int, labels: Sequence[int] | None) -> Path:
    """Stream the shards in index order into `samples.npz`, drop the state, put the result in place."""
    pieces = cover(finished_ranges(folder, n), n, folder.shards)
    partial = folder.state / "samples.npz"
    with NpzImageWriter(partial, n, resolution) as npz:
        for (start, stop), skip in pieces:
            npz.write(np.load(folder.shards / f"{start:08d}-{stop:08d}.npy", allow_pickle=False)[skip:])
        if labels is not None:
            npz.add("labels", np.asarray(labels, dtype=np.int64))
    os.replace(partial, folder.work / "samples.npz")
    shutil.rmtree(folder.state)
    if folder.replaces:
        replace_directory(folder.work, folder.out)
    return folder.out / "samples.npz"


def cover(ranges: Sequence[tuple[int, int]], n: int, where: Path) -> list[tuple[tuple[int, int], int]]:
    """Shards that give every sample 0..n-1 once, in order: ((start, stop), samples to skip at its start).

    Shards of runs with other batch sizes may overlap; each step takes the shard that reaches
    furthest and skips what the previous one already gave.
    """
    ranges = sorted(ranges)
    pieces: list[tuple[tuple[int, int], int]] = []
    position, i, best = 0, 0, None
    while position < n:
        while i < len(ranges) and ranges[i][0] <= position:
            if best is None or ranges[i][1] > best[1]:
                best = ranges[i]
            i += 1
        if best is None or best[1] <= position:
            gap_end = ranges[i][0] - 1 if i < len(ranges) else n - 1
            raise UserError(f"{where}: samples {position}..{gap_end} are missing; run the same command again to "
                            "sample them")
        pieces.append((best, position - best[0]))
        position = best[1]
    return pieces
