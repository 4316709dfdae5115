"""WebDataset tar shards: written from any mvq image dataset, read as one stream split by rank and worker.

At ImageNet scale a dataset is read from a few hundred tar files in sequence rather than from a
million files in random order. A shard folder holds `shard-000000.tar`, ... (WebDataset's layout:
each sample is `KEY.jpg`/`KEY.png` and `KEY.cls`) and `shards.json`, the number of samples in
each shard and the class names.

How an epoch is read (`ShardStream`), so that every sample is seen once per epoch across all
ranks and data-loading workers, and a resumed run reads exactly what an uninterrupted one would:

1. The shards are put in an order drawn from (seed, epoch); their samples, in that order, are one
   sequence of `total` samples.
2. The sequence is cut into `ranks × workers` equal contiguous ranges of whole batches; range
   `rank · workers + worker` is that worker's. Only the tail that does not fill
   a batch of every worker is left out of the epoch (it is read in other epochs, since the
   shard order changes).
3. A worker reads its range (opening only the shards it overlaps) through a shuffle buffer drawn
   from (seed, epoch, range), and decodes the images that leave the buffer, each with random crops
   and flips drawn from (seed, epoch, range, place in the range).
4. A run resumed after b batches of an epoch: the data loader takes batches from its workers in
   turn, so worker w had made batches w, w + W, ... of them. Each worker skips the batches its
   share already gave (reading, not decoding them), and the turns start where they stopped.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from mvq.data.files import ImageFileDataset
from mvq.data.images import SkippedFilesWarning
from mvq.errors import InvalidInputError, MissingInputError, UserError

SHARD_INDEX = "shards.json"
SHARD_PATTERN = "shard-%06d.tar"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")


# ----------------------------------------------------------------------------- writing


def _image_bytes(dataset: Dataset, index: int) -> tuple[str, bytes, int]:
    """(extension, encoded image, label) of one item: a file's own bytes, else the item's image as PNG."""
    if isinstance(dataset, ImageFileDataset):
        path = dataset.path(index)
        extension = path.suffix.lower().lstrip(".")
        extension = "jpg" if extension == "jpeg" else extension
        if extension in IMAGE_KEYS:
            return extension, path.read_bytes(), int(dataset.labels[index])
    item = dataset[index]
    pixels = ((torch.as_tensor(item["image"]).clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "png", buffer.getvalue(), int(item.get("label", -1))


def write_shards(dataset: Dataset, out: str | os.PathLike, samples_per_shard: int = 1000,
                 source: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Write `dataset` as shards in the new folder `out`; returns the index written to OUT/shards.json.

    Image files are stored as they are (their bytes, so training still crops and flips them at
    random); other datasets (torchvision's, the synthetic shapes) as PNGs of their images at the
    data config's resolution.
    """
    if samples_per_shard < 1:
        raise InvalidInputError(f"samples per shard must be at least 1, got {samples_per_shard}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=False)
    counts: list[int] = []
    with wds.ShardWriter(str(out / SHARD_PATTERN), maxcount=samples_per_shard, verbose=0) as writer:
        for index in tqdm(range(len(dataset)), desc="shards", disable=not progress):
            extension, data, label = _image_bytes(dataset, index)
            writer.write({"__key__": f"{index:09d}", extension: data, "cls": str(label).encode()})
            if index % samples_per_shard == 0:
                counts.append(0)
            counts[-1] += 1
    index_record = {"format": "mvq-shards", "version": 1, "num_samples": len(dataset),
                    "shards": [{"name": SHARD_PATTERN % i, "count": c} for i, c in enumerate(counts)],
                    "classes": list(getattr(dataset, "classes", None) or []), "source": source or {}}
    (out / SHARD_INDEX).write_text(json.dumps(index_record, indent=1) + "\n")
    return index_record


# ----------------------------------------------------------------------------- finding shards


@dataclass(frozen=True)
class ShardList:
    """The shards of one split: where each is (a path or URL), how many samples it holds, the class names."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    classes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(self.counts)


def _read_index(folder: Path) -> ShardList:
    path = folder / SHARD_INDEX
    try:
        record = json.loads(path.read_text())
        shards = record["shards"]
        urls = tuple(str(folder / s["name"]) for s in shards)
        counts = tuple(int(s["count"]) for s in shards)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{path} is not a shard index written by `mvq shards` ({exc}); write the shards "
                                "again") from None
    return ShardList(urls, counts, tuple(record.get("classes") or ()))


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def find_shards(spec: str | os.PathLike, samples_per_shard: int | None = None) -> ShardList:
    """The shards `spec` names: a folder with shards.json, a local glob or brace pattern
    (`data/shard-{000000..000127}.tar`), or URLs (`https://…/shard-{0000..1023}.tar`, `pipe:…`).

    The sample counts come from a shards.json beside local files; elsewhere every shard is taken
    to hold `samples_per_shard` samples (data.samples_per_shard), and a shard that holds another
    number stops the epoch with a message that says so.
    """
    spec = str(spec)
    folder = Path(spec)
    if folder.is_dir():
        if not (folder / SHARD_INDEX).is_file():
            raise MissingInputError(f"{folder} has no {SHARD_INDEX}: write shards with `mvq shards`, or name the "
                                    "tar files with a pattern and set data.samples_per_shard")
        return _read_index(folder)
    expanded = []
    for part in braceexpand(spec):  # a brace pattern names files (a missing one is an error); a glob finds them
        globbed = not _is_remote(part) and any(c in part for c in "*?[")
        expanded += sorted(glob.glob(part)) if globbed else [part]
    if not expanded:
        raise MissingInputError(f"no shards match {spec}")
    local = [Path(u) for u in expanded if not _is_remote(u)]
    if len(local) == len(expanded):
        missing = [p for p in local if not p.is_file()]
        if missing:
            raise MissingInputError(f"shard {missing[0]} not found ({len(missing)} of {len(local)} missing)")
        indexes = {p.parent for p in local}
        if len(indexes) == 1 and (local[0].parent / SHARD_INDEX).is_file():
            index = _read_index(local[0].parent)
            count_of = dict(zip(index.urls, index.counts))
            if all(str(p) in count_of for p in local):
                return ShardList(tuple(map(str, local)), tuple(count_of[str(p)] for p in local), index.classes)
    if samples_per_shard is None:
        raise UserError(f"{spec}: how many samples each shard holds is unknown (no {SHARD_INDEX} beside them); "
                        "set data.samples_per_shard")
    return ShardList(tuple(expanded), tuple([samples_per_shard] * len(expanded)))


# ----------------------------------------------------------------------------- reading


def _rank_and_world_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def buffered_shuffle(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Items in an order drawn by `rng`, holding at most `size` of them at a time."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """Training items {"image", "label", "key"} of a ShardList, an equal share for each rank and worker
    (module doc).

    Read it through `loader()`, whose data-loading workers are the `num_workers` the shares were
    cut for. `set_epoch` before each epoch (training does it); `resume(epoch, batches)` once, before
    the epoch a run resumes in. `rank`/`world_size` default to torch.distributed's.
    """

    def __init__(self, shards: ShardList, transform: Callable[[Image.Image], torch.Tensor], *, batch_size: int = 1,
                 num_workers: int = 0, seed: int = 0, shuffle_buffer: int = 1000, rank: int | None = None,
                 world_size: int | None = None):
        self.shards, self.transform, self.batch_size = shards, transform, batch_size
        self.num_workers, self.seed, self.shuffle_buffer = num_workers, seed, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.classes = list(shards.classes)
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches of this rank already trained)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        self._resume = (epoch, batches)

    def _rank_and_world_size(self) -> tuple[int, int]:
        rank, world = _rank_and_world_size()
        return (rank if self.rank is None else self.rank), (world if self.world_size is None else self.world_size)

    def _position(self) -> tuple[int, int, int, int]:
        """(rank, world size, worker, workers) of the process iterating."""
        rank, world = self._rank_and_world_size()
        info = get_worker_info()
        if (info.num_workers if info else 0) != self.num_workers:
            raise RuntimeError(f"a shard stream cut for {self.num_workers} workers is read by "
                               f"{info.num_workers if info else 0}: read it through its loader()")
        return rank, world, (info.id if info else 0), max(self.num_workers, 1)

    def range_length(self, streams: int) -> int:
        """Samples each of `streams` streams reads: equal, and whole batches."""
        length = self.shards.total // streams
        length -= length % self.batch_size
        if length < 1:
            raise UserError(f"{self.shards.total} samples in {len(self.shards.urls)} shards are too few for "
                            f"{streams} data streams (ranks × workers) of batch size {self.batch_size}")
        return length

    def stream_range(self, stream: int, streams: int) -> tuple[int, int]:
        """The samples [start, stop) of the epoch's sequence that data stream `stream` of `streams` reads."""
        length = self.range_length(streams)
        return stream * length, (stream + 1) * length

    def __len__(self) -> int:
        """Samples this rank reads per epoch (all its workers)."""
        workers = max(self.num_workers, 1)
        rank, world = self._rank_and_world_size()
        ranges = [self.stream_range(rank * workers + w, world * workers) for w in range(workers)]
        return sum(stop - start for start, stop in ranges)

    def loader(self) -> DataLoader:
        """Batches of this rank: its workers' batches in turn (fresh workers each epoch, which see the epoch)."""
        self.rank, self.world_size = self._rank_and_world_size()  # here: the workers have no process group
        return DataLoader(self, batch_size=self.batch_size, num_workers=self.num_workers, drop_last=True)

    def shard_order(self) -> list[int]:
        order = list(range(len(self.shards.urls)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def _raw(self, start: int, stop: int) -> Iterator[dict[str, Any]]:
        """Undecoded samples start..stop-1 of the epoch's sequence, opening only the shards they lie in."""
        offset = 0
        for shard in self.shard_order():
            url, count = self.shards.urls[shard], self.shards.counts[shard]
            if offset + count <= start or offset >= stop:
                offset += count
                continue
            first, last = max(start - offset, 0), min(stop - offset, count)
            seen = 0
            with wds.gopen(url) as stream:
                files = ({**member, "__url__": url} for member in wds.tariterators.tar_file_iterator(stream))
                for sample in wds.tariterators.group_by_keys(files):
                    if seen >= last:
                        break
                    if seen >= first:
                        yield sample
                    seen += 1
            if seen < last:
                raise InvalidInputError(f"shard {url} holds {seen} samples where {count} were expected; write its "
                                        f"{SHARD_INDEX} again (or fix data.samples_per_shard)")
            offset += count

    def _decode(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        try:
            if key is None:
                raise ValueError(f"no image ({', '.join(IMAGE_KEYS)}) among {sorted(k for k in sample if k[0] != '_')}")
            with Image.open(io.BytesIO(sample[key])) as image:
                pixels = self.transform(image.convert("RGB"))
        except Exception as exc:  # a damaged image: named, and the previous one is used in its place
            warnings.warn(SkippedFilesWarning(f"cannot read sample {sample.get('__key__')} of "
                                              f"{sample.get('__url__', 'a shard')} ({exc}); using another image"))
            return None
        label = int(sample["cls"]) if "cls" in sample else -1
        return {"image": pixels, "label": label, "key": sample["__key__"]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, workers = self._position()
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            # The loader starts its turns at worker 0, and the interrupted one was at worker b mod W:
            # worker w now plays the part of worker (w + b) mod W, past the batches that one made.
            batches = self._resume[1]
            worker = (worker + batches) % workers
            skip = len(range(worker, batches, workers)) * self.batch_size
        stream = rank * workers + worker
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_003 + stream)
        raw = buffered_shuffle(self._raw(*self.stream_range(stream, world * workers)), self.shuffle_buffer, rng)
        previous = None
        base = ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + stream) * 1_000_003
        for index, sample in enumerate(raw):
            if index < skip:
                continue
            with torch.random.fork_rng(devices=[]):  # a sample's random crop and flip: the same when resumed
                torch.manual_seed((base + index) % 2 ** 63)
                item = self._decode(sample)
            if item is None:
                if previous is None:
                    continue  # nothing to stand in yet: the epoch is one item shorter for this worker
                item = previous
            previous = item
            yield item


class ShardFiles(Dataset):
    """Random access to the samples of local shards, in their written order: what `mvq tokenize` and
    `mvq eval` read (every sample once, any sample by index). Each tar's member headers are read once."""

    def __init__(self, shards: ShardList, transform: Callable[[Image.Image], torch.Tensor]):
        self.transform, self.classes = transform, list(shards.classes)
        self._samples: list[tuple[str, int, int, int]] = []  # (file, image offset, size, label)
        for url, count in zip(shards.urls, shards.counts):
            if not Path(url).is_file():
                raise UserError(f"{url}: reading shards by index (tokenize, eval) needs them on a local disk; "
                                "copy them there, or point --data at the images they were written from")
            members: dict[str, dict[str, tarfile.TarInfo]] = {}
            with tarfile.open(url) as tar:
                for member in tar.getmembers():
                    if member.isreg() and "." in member.name:
                        key, extension = member.name.split(".", 1)
                        members.setdefault(key, {})[extension.lower()] = member
                labels = {key: int(tar.extractfile(files["cls"]).read()) for key, files in members.items()
                          if "cls" in files}
            images = [(key, files[next(e for e in IMAGE_KEYS if e in files)]) for key, files in members.items()
                      if any(e in files for e in IMAGE_KEYS)]
            if len(images) != count:
                raise InvalidInputError(f"shard {url} holds {len(images)} images where {count} were expected; "
                                        f"write its {SHARD_INDEX} again")
            self._samples += [(url, m.offset_data, m.size, labels.get(key, -1)) for key, m in images]

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        url, offset, size, label = self._samples[index]
        with open(url, "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        with Image.open(io.BytesIO(data)) as image:
            return {"image": self.transform(image.convert("RGB")), "label": label}


def shard_stream(spec: str | os.PathLike, transform, *, batch_size: int, num_workers: int, seed: int,
                 shuffle_buffer: int, samples_per_shard: int | None) -> ShardStream:
    """The training stream of one split's shards."""
    return ShardStream(find_shards(spec, samples_per_shard), transform, batch_size=batch_size,
                       num_workers=num_workers, seed=seed, shuffle_buffer=shuffle_buffer)

