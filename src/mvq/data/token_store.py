"""The token store file format: a dataset encoded once by an MQ-VAE, read by stage-2 training.

Stage 2 never runs the image encoder per step; it reads the (code, position) pairs of every
image from a store written by `mvq tokenize` (the job itself is `mvq.inference.tokenizing`). A store is
a folder::

    STORE/
      header.json                  what the tokens mean (codebook size, grid, K, classes, dtypes,
                                   the MQ-VAE's config and weight fingerprint) and how they were made
      part-00000-of-00002/         one part per rank that wrote it
        codes.npy                  count × K, smallest unsigned type that holds codebook_size - 1
        positions.npy              count × K, cell indices in [0, H·W): ascending, or (a store in rank
                                   order) the most important cell first
        labels.npy                 count, class index or -1 (signed type)
        lengths.npy                count, tokens in each row (only in a store with a budget per image)
        progress.json              rows written so far; the part is complete when done == size
      part-00001-of-00002/ ...

A store made with a budget per image (`variable_length`) has rows of K = the largest budget; row i
holds its `lengths[i]` tokens first (positions ascending), then zeros, which readers return as -1.

Parts hold contiguous blocks of the dataset, so reading them in order gives the same items in
the same order whatever the number of ranks. Rows are written in fixed-size chunks and
`progress.json` is replaced atomically after each chunk is flushed, so an interrupted run can
be continued: the rows after the recorded count are simply written again.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from mvq.storage.atomic import atomic_write_json
from mvq.config import recorded_config_differences
from mvq.errors import InvalidInputError, MissingInputError, UserError

HEADER_NAME = "header.json"
PROGRESS_NAME = "progress.json"
ARRAY_NAMES = ("codes", "positions", "labels")
FORMAT_NAME = "mvq-token-store"
FORMAT_VERSION = 1


class IncompleteStoreError(InvalidInputError):
    """A store whose writing has not finished (some part has fewer rows than it should)."""


# ----------------------------------------------------------------------------- dtypes


def smallest_integer_dtype(min_value: int, max_value: int) -> np.dtype:
    """The narrowest integer dtype holding [min_value, max_value].

    Unsigned types are used only up to 16 bits (uint8, uint16); wider ranges use int32/int64,
    which torch handles everywhere. A negative minimum gives a signed type (int8, int16, ...).
    """
    if min_value > max_value:
        raise ValueError(f"empty range [{min_value}, {max_value}]")
    candidates = ["uint8", "uint16", "int32", "int64"] if min_value >= 0 else ["int8", "int16", "int32", "int64"]
    for name in candidates:
        info = np.iinfo(name)
        if info.min <= min_value and max_value <= info.max:
            return np.dtype(name)
    raise ValueError(f"no integer dtype holds [{min_value}, {max_value}]")


def store_dtypes(codebook_size: int, num_cells: int, num_classes: int | None,
                 variable_length: bool = False) -> dict[str, str]:
    """Dtypes of the arrays: codes < codebook_size, positions < num_cells, labels in [-1, C); with
    `variable_length` also lengths ≤ num_cells."""
    label_max = (num_classes - 1) if num_classes else 0
    if num_classes is None:  # classes not declared by the dataset: keep room for any label
        label_max = np.iinfo(np.int32).max
    return {
        "codes": smallest_integer_dtype(0, codebook_size - 1).name,
        "positions": smallest_integer_dtype(0, num_cells - 1).name,
        "labels": smallest_integer_dtype(-1, max(label_max, 0)).name,
        **({"lengths": smallest_integer_dtype(0, num_cells).name} if variable_length else {}),
    }


# ----------------------------------------------------------------------------- header


@dataclasses.dataclass(frozen=True)
class TokenStoreHeader:
    """What a store's tokens mean and how the store is laid out (`header.json`).

    `num_classes` is None when the dataset did not declare its classes; readers then infer it
    from the labels. `part_sizes[r]` is the number of rows rank r writes.
    """

    codebook_size: int
    grid_size: int
    num_tokens: int
    num_classes: int | None
    part_sizes: tuple[int, ...]
    dtypes: Mapping[str, str]
    flip: bool = False
    vae: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    variable_length: bool = False  # a budget per image: rows of num_tokens, `lengths` of them used
    order: str = "raster"          # positions ascending | "rank": the most important cell first

    @property
    def array_names(self) -> tuple[str, ...]:
        return (*ARRAY_NAMES, "lengths") if self.variable_length else ARRAY_NAMES

    @property
    def count(self) -> int:
        """Rows in the whole store (all parts)."""
        return sum(self.part_sizes)

    @property
    def num_cells(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def world_size(self) -> int:
        return len(self.part_sizes)

    def to_json(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "codebook_size": self.codebook_size,
            "grid_size": self.grid_size,
            "num_tokens": self.num_tokens,
            "num_classes": self.num_classes,
            "count": self.count,
            "part_sizes": list(self.part_sizes),
            "dtypes": dict(self.dtypes),
            "flip": self.flip,
            "vae": dict(self.vae),
            "source": dict(self.source),
            **({"variable_length": True} if self.variable_length else {}),
            **({"order": self.order} if self.order != "raster" else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "header") -> "TokenStoreHeader":
        if data.get("format") != FORMAT_NAME:
            raise InvalidInputError(f"{where} is not a token store header (format {data.get('format')!r})")
        if data.get("version") != FORMAT_VERSION:
            raise InvalidInputError(f"{where} has token store version {data.get('version')!r}; "
                                             f"this mvq reads version {FORMAT_VERSION}")
        try:
            return cls(
                codebook_size=int(data["codebook_size"]),
                grid_size=int(data["grid_size"]),
                num_tokens=int(data["num_tokens"]),
                num_classes=None if data["num_classes"] is None else int(data["num_classes"]),
                part_sizes=tuple(int(n) for n in data["part_sizes"]),
                dtypes=dict(data["dtypes"]),
                flip=bool(data.get("flip", False)),
                vae=dict(data.get("vae", {})),
                source=dict(data.get("source", {})),
                variable_length=bool(data.get("variable_length", False)),
                order=str(data.get("order", "raster")),
            )
        except KeyError as exc:
            raise InvalidInputError(f"{where} lacks the field {exc.args[0]!r}") from exc


def read_header(path: str | os.PathLike) -> TokenStoreHeader:
    """Read `STORE/header.json`, with a clear error when the folder is not a token store."""
    path = Path(path)
    header_path = path / HEADER_NAME
    if not path.is_dir():
        raise MissingInputError(f"token store not found: {path} (create it with `mvq tokenize`)")
    if not header_path.is_file():
        raise MissingInputError(f"{path} is not a token store: {HEADER_NAME} is missing "
                                f"(create it with `mvq tokenize`)")
    try:
        data = json.loads(header_path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{header_path} is not valid JSON: {exc}") from exc
    return TokenStoreHeader.from_json(data, where=str(header_path))


def part_name(rank: int, world_size: int) -> str:
    return f"part-{rank:05d}-of-{world_size:05d}"


def shard_bounds(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous block [start, stop) of `num_items` that `rank` of `world_size` handles."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return num_items * rank // world_size, num_items * (rank + 1) // world_size


# ----------------------------------------------------------------------------- compatibility


def vae_token_geometry(config: Any) -> dict[str, int]:
    """codebook_size, grid_size and num_tokens: what tokens mean, for anything that records them.

    A tokenizer's config (`MQVAEConfig`, `VQGANConfig`), a `StackformerConfig` or a store's header:
    tokens pass between two of them only when these agree.
    """
    return {"codebook_size": int(config.codebook_size), "grid_size": int(config.grid_size),
            "num_tokens": int(config.num_tokens)}


def tokenizer_name(vae_config: Any) -> str:
    """"MQ-VAE" or "VQGAN": what messages call the model behind a store (its config class says)."""
    return getattr(type(vae_config), "DISPLAY_NAME", "tokenizer")


def decodes_any_budget(vae_config: Any, num_tokens: int) -> bool:
    """Whether the tokenizer decodes `num_tokens` per image whatever its own K.

    An MQ-VAE decodes any subset of its N cells (what a `--keep` store, or a Stackformer learnt from
    one, holds); a VQGAN only its full grid.
    """
    return tokenizer_name(vae_config) == "MQ-VAE" and num_tokens <= int(vae_config.grid_size) ** 2


def check_compatible(header: TokenStoreHeader | Mapping[str, Any], vae_config: Any,
                     weights_sha256: str | None = None, any_budget: bool = False) -> None:
    """Raise InvalidInputError unless the tokenizer (MQ-VAE or VQGAN) with `vae_config` can decode a store's tokens.

    `any_budget` accepts a store of another number of tokens per image than the tokenizer's K, or a
    number per image (an MQ-VAE decodes any subset of its cells): what stage 2 learns from.

    The codebook size, grid and K must agree. When `weights_sha256` (see
    `mvq.models.pretrained.weights_fingerprint`) is
    given and the store recorded one, they must agree too: same shapes but other weights means
    the codes index a different codebook.
    """
    if isinstance(header, Mapping):
        header = TokenStoreHeader.from_json(header)
    expected, found = vae_token_geometry(vae_config), vae_token_geometry(header)
    name = tokenizer_name(vae_config)
    if any_budget and decodes_any_budget(vae_config, found["num_tokens"]):
        expected["num_tokens"] = found["num_tokens"]
    elif header.variable_length or (header.source.get("keep") is not None
                                    and found["num_tokens"] != expected["num_tokens"]):
        budget = "a budget per image" if header.variable_length else f"{found['num_tokens']} tokens per image"
        raise InvalidInputError(f"token store holds {budget}, not the {name}'s K = {expected['num_tokens']}: "
                                f"what reads it here needs the {name}'s own K (tokenize without --keep or "
                                "--quality-target)")
    diffs = [f"{k}: store {found[k]}, {name} {expected[k]}" for k in expected if found[k] != expected[k]]
    if diffs:
        raise InvalidInputError(f"token store does not match the {name} (" + "; ".join(diffs) + "). "
                                         f"Tokenize the data again with this {name} (`mvq tokenize`).")
    stored = header.vae.get("weights_sha256")
    if weights_sha256 is not None and stored is not None and stored != weights_sha256:
        raise InvalidInputError(f"token store was written by a {name} with other weights "
                                         f"(fingerprint {stored[:12]}…, this one {weights_sha256[:12]}…). "
                                         f"Tokenize the data again with this {name} (`mvq tokenize`).")
    recorded_config = header.vae.get("config")
    differ = recorded_config_differences(vae_config, recorded_config) if isinstance(recorded_config, Mapping) else []
    if differ:
        raise InvalidInputError(f"token store was written by a {name} with another config (differs in: "
                                f"{', '.join(differ)}); was the {name}'s config.json edited? Tokenize the data again "
                                f"with this {name} (`mvq tokenize`), or use the {name} that wrote the store.")


# ----------------------------------------------------------------------------- writing


def part_shapes(header: TokenStoreHeader, rows: int) -> dict[str, tuple[int, ...]]:
    """The shape of each array of a part of `rows` rows."""
    return {"codes": (rows, header.num_tokens), "positions": (rows, header.num_tokens), "labels": (rows,),
            "lengths": (rows,)}


def _array_problem(path: Path, shape: tuple[int, ...], dtype: str) -> str | None:
    """What is wrong with one array file of a part (None when it is whole and of the header's shape and dtype)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError, EOFError):
        return f"{path.name} is truncated or not a .npy file"
    if array.shape != shape or array.dtype != np.dtype(dtype):
        return f"{path.name} holds {array.dtype} {array.shape}, the header says {dtype} {shape}"
    return None


def create_store(path: str | os.PathLike, header: TokenStoreHeader) -> Path:
    """Create STORE/header.json, or check that an existing one describes the same store.

    Every rank calls this with the same header; a store started with other settings (another
    MQ-VAE, dataset, flip or world size) is refused rather than mixed with new rows.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if (path / HEADER_NAME).is_file():
        existing = read_header(path).to_json()
        wanted = header.to_json()
        diffs = [k for k in wanted if existing.get(k) != wanted[k]]
        if diffs:
            details = "; ".join(f"{k}: store {existing.get(k)!r}, now {wanted[k]!r}" for k in diffs)
            raise InvalidInputError(f"{path} already holds a token store made with other settings ({details}). "
                                             f"Pass the same arguments to continue it, or choose another --out.")
    else:
        atomic_write_json(path / HEADER_NAME, header.to_json())
    return path


class TokenPartWriter:
    """Writes one rank's part of a store in chunks, recording progress after each chunk.

    `done` is the number of rows already written (0 for a new part); `append` writes the next
    rows, flushes them and then records the new count atomically, so after an interruption at
    most the last chunk is lost and is written again by the next run.
    """

    def __init__(self, path: str | os.PathLike, header: TokenStoreHeader, rank: int):
        self.header = header
        self.rank = rank
        self.size = header.part_sizes[rank]
        self.dir = Path(path) / part_name(rank, header.world_size)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._shapes = part_shapes(header, self.size)
        progress_path = self.dir / PROGRESS_NAME
        if progress_path.is_file() and self._arrays_whole():
            self.done = int(json.loads(progress_path.read_text())["done"])
            self._arrays = {n: np.load(self.dir / f"{n}.npy", mmap_mode="r+") for n in header.array_names}
        else:  # new, or its arrays were cut short (a full disk): written again from its first row
            self._arrays = self._allocate()
            self.done = 0
            self._record_progress()

    def _arrays_whole(self) -> bool:
        return all(_array_problem(self.dir / f"{n}.npy", self._shapes[n], self.header.dtypes[n]) is None
                   for n in self.header.array_names)

    def _allocate(self) -> dict[str, np.ndarray]:
        """Create the arrays at full size (under temporary names first, then renamed).

        Their disk space is reserved up front, so a full disk is one error here rather than a
        crash (SIGBUS) when a memory-mapped page can later not be written.
        """
        for name in self.header.array_names:
            tmp = self.dir / f"{name}.npy.tmp"
            try:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.header.dtypes[name],
                                                  shape=self._shapes[name])
                del array
                with open(tmp, "rb+") as handle:
                    os.posix_fallocate(handle.fileno(), 0, os.path.getsize(tmp))
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                if exc.errno == errno.ENOSPC:
                    raise UserError(f"the disk is full: no room for the token store's {self.dir / name}.npy "
                                    f"({self.size} rows); free some space and run the same command again") from exc
                raise
            os.replace(tmp, self.dir / f"{name}.npy")
        return {n: np.load(self.dir / f"{n}.npy", mmap_mode="r+") for n in self.header.array_names}

    def _record_progress(self) -> None:
        atomic_write_json(self.dir / PROGRESS_NAME, {"done": self.done, "size": self.size})

    @property
    def complete(self) -> bool:
        return self.done >= self.size

    def append(self, codes: np.ndarray | torch.Tensor, positions: np.ndarray | torch.Tensor,
               labels: np.ndarray | torch.Tensor, lengths: np.ndarray | torch.Tensor | None = None) -> None:
        """Write the next rows (B×K codes, B×K positions, B labels; in a variable-length store also B
        lengths, entries beyond a row's length being -1) and record them as done."""
        codes, positions, labels = (np.asarray(x.cpu() if torch.is_tensor(x) else x).astype(np.int64)
                                    for x in (codes, positions, labels))
        k, b = self.header.num_tokens, len(codes)
        if codes.shape != (b, k) or positions.shape != (b, k) or labels.shape != (b,):
            raise ValueError(f"expected codes and positions of shape B×{k} and labels of shape B, got "
                             f"{codes.shape}, {positions.shape}, {labels.shape}")
        if (lengths is not None) != self.header.variable_length:
            raise ValueError("lengths are given exactly when the store holds a budget per image")
        if self.done + b > self.size:
            raise ValueError(f"part {self.rank} holds {self.size} rows; {self.done} written, {b} more do not fit")
        used = np.ones((b, k), dtype=bool)
        arrays = {"codes": codes, "positions": positions, "labels": labels}
        if lengths is not None:
            lengths = np.asarray(lengths.cpu() if torch.is_tensor(lengths) else lengths).astype(np.int64)
            self._check_range("lengths", lengths, 1, k + 1)
            used = np.arange(k) < lengths[:, None]
            if ((codes != -1) | (positions != -1))[~used].any():
                raise ValueError("entries beyond a row's length must be -1")
            codes, positions = np.where(used, codes, 0), np.where(used, positions, 0)  # stored as 0
            arrays = {"codes": codes, "positions": positions, "labels": labels, "lengths": lengths}
        self._check_range("codes", codes, 0, self.header.codebook_size)
        self._check_range("positions", positions, 0, self.header.num_cells)
        num_classes = self.header.num_classes
        self._check_range("labels", labels, -1, num_classes if num_classes is not None
                          else int(np.iinfo(self.header.dtypes["labels"]).max))
        if self.header.order == "raster":
            ascending = np.diff(positions, axis=1) > 0
            if k > 1 and not ascending[used[:, 1:]].all():
                raise ValueError("positions must be strictly ascending along each row (raster order)")
        elif any(len(set(row[:n])) != n for row, n in zip(positions.tolist(), used.sum(1).tolist())):
            raise ValueError("a row's positions must all differ")
        stop = self.done + b
        for name, values in arrays.items():
            self._arrays[name][self.done:stop] = values
            self._arrays[name].flush()
        self.done = stop
        self._record_progress()

    @staticmethod
    def _check_range(name: str, values: np.ndarray, low: int, high: int) -> None:
        """Values outside [low, high) would wrap silently in a narrow dtype: refuse them."""
        if values.size and (values.min() < low or values.max() >= high):
            raise ValueError(f"{name} must lie in [{low}, {high}), got values in "
                             f"[{values.min()}, {values.max()}]")


# ----------------------------------------------------------------------------- reading


class TokenStore(Dataset):
    """All parts of a token store read as one dataset (memory-mapped, nothing loaded up front).

    Items are dicts: `codes` (LongTensor K), `positions` (LongTensor K, ascending), `label`
    (int, -1 when the image has none); in a variable-length store also `length` (int), the
    entries beyond it being -1. Part r's rows come before part r + 1's, which is the
    order of the dataset that was tokenized (originals and their flips interleaved when the
    store was made with flipping).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header = read_header(self.path)
        self._array_names = header.array_names
        self._part_dirs = [self.path / part_name(r, header.world_size) for r in range(header.world_size)]
        self._check_complete(header)
        self._offsets = np.cumsum([0, *header.part_sizes])
        self._arrays: list[dict[str, np.ndarray]] | None = None
        if header.num_classes is None:  # not declared when written: infer from the labels
            max_label = max((int(self._open()[r]["labels"].max()) for r, n in enumerate(header.part_sizes) if n),
                            default=-1)
            header = dataclasses.replace(header, num_classes=max_label + 1)
        self.header = header

    def _check_complete(self, header: TokenStoreHeader) -> None:
        problems = []
        for part_dir, size in zip(self._part_dirs, header.part_sizes):
            progress = part_dir / PROGRESS_NAME
            if not progress.is_file():
                problems.append(f"{part_dir.name} is missing")
                continue
            done = int(json.loads(progress.read_text())["done"])
            if done < size:
                problems.append(f"{part_dir.name} has {done} of {size} rows")
        if problems:
            raise IncompleteStoreError(
                f"token store {self.path} is incomplete: {', '.join(problems)}. Run the same "
                f"`mvq tokenize` command again (with {header.world_size} rank(s)) to finish it.")
        self._check_arrays(header)

    def _check_arrays(self, header: TokenStoreHeader) -> None:
        """Every array whole, of the header's shape and dtype, its values in range: a damaged store is one
        error when it is opened, not a crash deep inside training."""
        limits = {"codes": (0, header.codebook_size), "positions": (0, header.num_cells),
                  "labels": (-1, header.num_classes if header.num_classes is not None else None),
                  "lengths": (1, header.num_tokens + 1)}
        for part_dir, size in zip(self._part_dirs, header.part_sizes):
            shapes = part_shapes(header, size)
            for name in header.array_names:
                path = part_dir / f"{name}.npy"
                problem = _array_problem(path, shapes[name], header.dtypes[name])
                if problem is None and size:
                    low, high = limits[name]
                    values = np.load(path, mmap_mode="r")
                    found = int(values.min()), int(values.max())
                    if found[0] < low or (high is not None and found[1] >= high):
                        problem = (f"{name}.npy holds values in [{found[0]}, {found[1]}], outside "
                                   f"[{low}, {high if high is not None else 'any'})")
                if problem is not None:
                    raise InvalidInputError(f"token store {self.path} is damaged: {part_dir.name}/{problem}. "
                                            "Tokenize the data again into a new folder (`mvq tokenize`).")

    def _open(self) -> list[dict[str, np.ndarray]]:
        """Memory-map the arrays on first use (per process, so DataLoader workers map their own)."""
        if self._arrays is None:
            self._arrays = [{n: np.load(d / f"{n}.npy", mmap_mode="r") for n in self._array_names}
                            for d in self._part_dirs]
        return self._arrays

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None  # never pickle the mapped data itself
        return state

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a token store of {len(self)} items")
        part = int(np.searchsorted(self._offsets, index, side="right")) - 1
        row = index - int(self._offsets[part])
        arrays = self._open()[part]
        item = {
            "codes": torch.from_numpy(arrays["codes"][row].astype(np.int64)),
            "positions": torch.from_numpy(arrays["positions"][row].astype(np.int64)),
            "label": int(arrays["labels"][row]),
        }
        if "lengths" in arrays:
            item["length"] = length = int(arrays["lengths"][row])
            item["codes"][length:] = -1
            item["positions"][length:] = -1
        return item

    def arrays(self) -> Iterator[dict[str, np.ndarray]]:
        """The memory-mapped arrays of each part, in order (for bulk reads and statistics)."""
        return iter(self._open())

