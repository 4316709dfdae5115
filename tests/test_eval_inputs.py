"""`mvq eval` refuses bad inputs in one line, before any feature network is built or run.

A stand-in feature network (8 features, no Inception Score head) counts how often it is built
and called; every refusal here must come with zero of both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvq.errors import InvalidInputError
from mvq.evaluation import GaussianAccumulator, evaluate_generation, frechet_distance, load_statistics
from mvq.evaluation import frechet

pytestmark = pytest.mark.usefixtures("one_thread")


class CountingNetwork(torch.nn.Module):
    """Stand-in for Inception: a fixed projection of 2×2-pooled pixels to 8 features; counts builds and calls."""

    feature_dim = 8
    has_logits = False
    missing_logits_message = "Inception Score unavailable: stand-in network"
    built = 0
    calls = 0

    def __init__(self, weights: str | None = None):
        super().__init__()
        type(self).built += 1
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(3 * 2 * 2, self.feature_dim, generator=generator))
        self.weights_path = Path("stand-in")

    def forward(self, images: torch.Tensor):
        type(self).calls += 1
        pooled = F.adaptive_avg_pool2d(images.float() / 255, 2).flatten(1)
        return torch.tanh(pooled @ self.projection) + 0.1 * pooled.sum(1, keepdim=True), None


@pytest.fixture()
def network(monkeypatch) -> type[CountingNetwork]:
    """The stand-in, also what `mvq eval` builds as its Inception; counts start at zero."""
    import mvq.evaluation

    monkeypatch.setattr(CountingNetwork, "built", 0)
    monkeypatch.setattr(CountingNetwork, "calls", 0)
    monkeypatch.setattr(mvq.evaluation, "InceptionV3", CountingNetwork)
    return CountingNetwork


def images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    """Valid samples and reference statistics of the stand-in's size, and broken variants of both."""
    samples = tmp_path / "samples.npz"
    np.savez(samples, images(6))
    rng = np.random.default_rng(1)
    features = rng.normal(size=(20, 8))
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=features.mean(0), sigma=np.cov(features, rowvar=False), num_images=20)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(samples.read_bytes()[: samples.stat().st_size // 2])
    return {"samples": samples, "stats": stats, "truncated": truncated}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of `mvq ARGV`."""
    from mvq.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code, capsys.readouterr().err


def assert_one_line_refusal(argv: list[str], capsys, *words: str) -> str:
    code, err = run_cli(argv, capsys)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mvq eval: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


COMMON = ["--device", "cpu", "--num-workers", "0", "--no-progress", "--batch-size", "4"]


# ---------------------------------------------------------------------------------------------
# statistics: checked when read, and a Fréchet distance is never negative


def save_stats(path: Path, mu, sigma, **extra) -> Path:
    np.savez(path, mu=mu, sigma=sigma, **extra)
    return path


def test_statistics_that_are_no_gaussian_are_refused_when_read(tmp_path):
    eye = np.eye(4)
    asymmetric = eye.copy()
    asymmetric[0, 1] = 0.5
    indefinite = np.array([[1.0, 2.0, 0, 0], [2.0, 1.0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # eigenvalue −1
    cases = {
        "minus_identity": (np.zeros(4), -eye, "positive semi-definite"),
        "indefinite": (np.zeros(4), indefinite, "positive semi-definite"),
        "asymmetric": (np.zeros(4), asymmetric, "symmetric"),
        "nan_mu": (np.array([0.0, np.nan, 0, 0]), eye, "NaN"),
        "inf_sigma": (np.zeros(4), np.where(eye > 0, np.inf, 0.0), "NaN"),
        "not_square": (np.zeros(4), np.ones((4, 3)), "4×4"),
        "matrix_mu": (np.zeros((4, 1)), eye, "vector"),
        "empty": (np.zeros(0), np.zeros((0, 0)), "vector"),
        "complex": (np.zeros(4, dtype=complex), eye, "real"),
        "text": (np.array(["a", "b", "c", "d"]), eye, "real"),
    }
    for name, (mu, sigma, message) in cases.items():
        path = save_stats(tmp_path / f"{name}.npz", mu, sigma)
        with pytest.raises(InvalidInputError, match=message) as info:
            load_statistics(path)
        assert str(path) in str(info.value), name
    for count in ("many", 1, 2.5, -3):
        path = save_stats(tmp_path / "count.npz", np.zeros(4), eye, num_images=count)
        with pytest.raises(InvalidInputError, match="num_images"):
            load_statistics(path)
    assert load_statistics(save_stats(tmp_path / "count.npz", np.zeros(4), eye, num_images=50000.0))[2] == \
        {"num_images": 50000}
    with pytest.raises(InvalidInputError, match="feature network gives 8"):
        load_statistics(save_stats(tmp_path / "fine.npz", np.zeros(4), eye), feature_dim=8)
    np.save(tmp_path / "array.npy", eye)
    with pytest.raises(InvalidInputError, match="not an .npz of reference statistics"):
        load_statistics(tmp_path / "array.npy")


def test_covariances_of_float32_features_pass_the_check(tmp_path, monkeypatch):
    """Round-off of real covariances stays far inside the tolerance: rank-deficient ones (fewer images
    than features), ones stored as float32, and the one-pass float32 formula other tools use."""
    tolerance = frechet.PSD_TOLERANCE
    monkeypatch.setattr(frechet, "PSD_TOLERANCE", tolerance / 10)  # they pass with a tenfold margin
    rng = np.random.default_rng(2)
    dim = 1024
    for n in (40, 1500):
        # non-negative, pool-feature-like values with a mean twice their spread (hard on one-pass formulas)
        features = (np.maximum(rng.normal(2.0, 1.0, (n, dim)), 0) * rng.uniform(0.1, 3.0, dim)).astype(np.float32)
        accumulator = GaussianAccumulator(dim)
        accumulator.update(torch.from_numpy(features))
        mu, sigma = accumulator.mean_and_covariance()
        f = torch.from_numpy(features)
        mean32 = f.mean(0)
        one_pass32 = ((f.T @ f - n * torch.outer(mean32, mean32)) / (n - 1)).numpy()
        for covariance in (sigma, sigma.astype(np.float32), np.cov(features, rowvar=False, dtype=np.float32),
                           one_pass32):
            frechet.check_statistics(mu, covariance)
    monkeypatch.setattr(frechet, "PSD_TOLERANCE", tolerance)
    path = save_stats(tmp_path / "real.npz", mu.astype(np.float32), sigma.astype(np.float32))
    loaded_mu, loaded_sigma, _ = load_statistics(path, feature_dim=dim)
    assert loaded_sigma.dtype == np.float64 and np.array_equal(loaded_sigma, sigma.astype(np.float32))


def test_frechet_distance_of_a_non_covariance_is_refused_and_round_off_is_clamped():
    indefinite = np.array([[1.0, 2.0], [2.0, 1.0]])  # positive diagonal, eigenvalue −1: the distance would be −2
    with pytest.raises(InvalidInputError, match="negative"):
        frechet_distance(np.zeros(2), indefinite, np.zeros(2), indefinite)
    with pytest.raises(InvalidInputError):
        frechet_distance(np.zeros(3), -np.eye(3), np.zeros(3), np.eye(3))
    with pytest.raises(InvalidInputError, match="symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    # A set against itself: exactly zero or a tiny positive number, never round-off below zero.
    rng = np.random.default_rng(0)
    for _ in range(20):
        features = rng.normal(size=(rng.integers(3, 40), 24)).astype(np.float32).astype(np.float64)
        mu, sigma = features.mean(0), np.cov(features, rowvar=False)
        distance = frechet_distance(mu, sigma, mu, sigma)
        assert 0.0 <= distance < 1e-9 * np.trace(sigma)


# ---------------------------------------------------------------------------------------------
# every input checked before any network runs


def test_reference_statistics_are_checked_before_the_network_runs(files, tmp_path, network, capsys):
    wrong = {
        "other_size.npz": (np.zeros(16), np.eye(16), "16-dimensional"),
        "nan.npz": (np.full(8, np.nan), np.eye(8), "NaN"),
        "minus_identity.npz": (np.zeros(8), -np.eye(8), "positive semi-definite"),
        "bad_count.npz": (np.zeros(8), np.eye(8), "num_images"),
    }
    for name, (mu, sigma, message) in wrong.items():
        extra = {"num_images": "many"} if name == "bad_count.npz" else {}
        ref = save_stats(tmp_path / name, mu, sigma, **extra)
        with pytest.raises(InvalidInputError, match=message):
            evaluate_generation(files["samples"], ref, CountingNetwork(), batch_size=4)
        assert network.calls == 0, name
        network.built = 0
        assert_one_line_refusal(["eval", "gen", "--samples", str(files["samples"]), "--ref", str(ref),
                                 "--out", str(tmp_path / "gen.json"), *COMMON], capsys, name, message)
        assert network.built == 0 and network.calls == 0, name
        assert not (tmp_path / "gen.json").exists()


def test_truncated_or_malformed_image_arrays_are_one_line(files, tmp_path, network, capsys):
    as_float = tmp_path / "float_images.npz"
    np.savez(as_float, images(4).astype(np.float32))
    channels_first = tmp_path / "channels_first.npz"
    np.savez(channels_first, images(4).transpose(0, 3, 1, 2))
    stats_only = files["stats"]
    short_npy = tmp_path / "short.npy"
    np.save(short_npy, images(6))
    short_npy.write_bytes(short_npy.read_bytes()[:-100])  # header intact, last image incomplete
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 certainly not a zip archive")
    cases = [(files["truncated"], "truncated"), (garbage, "truncated"), (short_npy, "truncated"),
             (as_float, "uint8"), (channels_first, "N×R×R×3"), (stats_only, "arr_0")]
    for path, message in cases:
        assert_one_line_refusal(["eval", "gen", "--samples", str(path), "--ref", str(files["stats"]),
                                 "--out", str(tmp_path / "gen.json"), *COMMON], capsys, path.name, message)
        assert_one_line_refusal(["eval", "stats", "--data", str(path), "--out", str(tmp_path / "out.npz"), *COMMON],
                                capsys, path.name, message)
        if path != stats_only:  # an .npz of statistics is a valid --ref
            assert_one_line_refusal(["eval", "gen", "--samples", str(files["samples"]), "--ref", str(path),
                                     "--out", str(tmp_path / "gen.json"), *COMMON], capsys, path.name, message)
        assert network.built == 0 and network.calls == 0, path.name
    assert not (tmp_path / "gen.json").exists() and not (tmp_path / "out.npz").exists()
    with pytest.raises(InvalidInputError, match="truncated"):
        load_statistics(files["truncated"])


def test_too_few_images_are_refused_before_the_network_runs(files, tmp_path, network, capsys):
    one = tmp_path / "one.npz"
    np.savez(one, images(1))
    for argv, word in [(["--samples", str(one), "--ref", str(files["stats"])], "one.npz"),
                       (["--samples", str(files["samples"]), "--ref", str(one)], "one.npz"),
                       (["--samples", str(files["samples"]), "--ref", str(files["stats"]), "--n", "1"], "--n 1")]:
        assert_one_line_refusal(["eval", "gen", *argv, "--out", str(tmp_path / "gen.json"), *COMMON], capsys,
                                "at least 2", word)
    assert_one_line_refusal(["eval", "stats", "--data", str(one), "--out", str(tmp_path / "s.npz"), *COMMON], capsys,
                            "at least 2", "one.npz")
    assert network.built == 0 and network.calls == 0


# ---------------------------------------------------------------------------------------------
# counts and output paths, before anything is loaded


@pytest.mark.parametrize("flag, value", [("--n", "0"), ("--n", "-5"), ("--batch-size", "0"), ("--num-workers", "-1"),
                                         ("--isc-splits", "0"), ("--kid-subset-size", "1"), ("--resolution", "0")])
def test_eval_gen_refuses_counts_out_of_range(files, tmp_path, network, capsys, flag, value):
    argv = ["eval", "gen", "--samples", str(files["samples"]), "--ref", str(files["stats"]),
            "--out", str(tmp_path / "gen.json"), *COMMON, flag, value]
    assert_one_line_refusal(argv, capsys, flag, value)
    assert network.built == 0 and not (tmp_path / "gen.json").exists()


def test_count_refusals_of_eval_stats_recon_and_the_python_interface(files, tmp_path, network, capsys):
    for flag, value in [("--n", "0"), ("--batch-size", "-2"), ("--num-workers", "-1"), ("--resolution", "-8")]:
        assert_one_line_refusal(["eval", "stats", "--data", str(files["samples"]), "--out", str(tmp_path / "s.npz"),
                                 *COMMON, flag, value], capsys, flag, value)
        if flag != "--resolution":  # recon evaluates at the tokenizer's resolution
            assert_one_line_refusal(["eval", "recon", "--vae", str(tmp_path / "no-vae"), "--data", str(tmp_path),
                                     "--out", str(tmp_path / "r.json"), *COMMON, flag, value], capsys, flag, value)
    assert network.built == 0
    for n in (0, -1):
        with pytest.raises(InvalidInputError, match="at least 1"):
            evaluate_generation(files["samples"], files["stats"], CountingNetwork(), num_samples=n)
    for setting in ({"batch_size": 0}, {"isc_splits": 0}, {"kid_subset_size": 1}, {"num_workers": -1}):
        with pytest.raises(InvalidInputError, match=f"{next(iter(setting))} must be at least"):
            evaluate_generation(files["samples"], files["stats"], CountingNetwork(), **setting)
    assert network.calls == 0
    from mvq.evaluation import evaluate_reconstruction

    class NeverRun(torch.nn.Module):
        def forward(self, images):
            raise AssertionError("the tokenizer ran")

    for setting in ({"num_images": 0}, {"batch_size": 0}, {"num_workers": -1}):
        with pytest.raises(InvalidInputError, match=f"{next(iter(setting))} must be at least"):
            evaluate_reconstruction(NeverRun(), [{"image": torch.zeros(3, 8, 8)}] * 3, **setting)


def test_output_path_is_checked_before_anything_is_loaded(files, tmp_path, network, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    gen = ["eval", "gen", "--samples", str(files["samples"]), "--ref", str(files["stats"]), *COMMON]
    assert_one_line_refusal([*gen, "--out", str(folder)], capsys, "a_folder", "is a folder")
    assert_one_line_refusal([*gen, "--out", str(a_file / "gen.json")], capsys, "a_file", "not a folder")
    for name in ("samples", "stats"):  # writing the report over an input would destroy it
        assert_one_line_refusal([*gen, "--out", str(files[name])], capsys, files[name].name, "input")
    stats = ["eval", "stats", "--data", str(files["samples"]), *COMMON]
    assert_one_line_refusal([*stats, "--out", str(folder)], capsys, "a_folder", "is a folder")
    assert_one_line_refusal([*stats, "--out", str(tmp_path / "stats.json")], capsys, "stats.json", ".npz")
    assert_one_line_refusal([*stats, "--out", str(files["samples"])], capsys, "samples.npz", "input")
    assert_one_line_refusal(["eval", "recon", "--vae", str(tmp_path / "no-vae"), "--data", str(tmp_path),
                             "--out", str(folder), *COMMON], capsys, "a_folder", "is a folder")
    assert network.built == 0
    assert files["samples"].stat().st_size > 1000 and list(folder.iterdir()) == []


def test_stats_then_gen_with_the_stand_in_network(files, tmp_path, network, capsys):
    """The checked path still computes: statistics written by `eval stats` give the FID of the images."""
    reference = tmp_path / "reference.npz"
    np.savez(reference, images(7, seed=3))
    out = tmp_path / "new" / "folder" / "ref_stats.npz"  # a parent folder that does not exist yet is made
    code, err = run_cli(["eval", "stats", "--data", str(reference), "--out", str(out), *COMMON], capsys)
    assert code == 0, err
    assert load_statistics(out, feature_dim=8)[2]["num_images"] == 7
    results = {}
    for ref in (out, reference):
        report = tmp_path / f"gen_{ref.stem}.json"
        code, err = run_cli(["eval", "gen", "--samples", str(files["samples"]), "--ref", str(ref),
                             "--out", str(report), *COMMON], capsys)
        assert code == 0, err
        results[ref.stem] = json.loads(report.read_text())["metrics"]
    assert results["ref_stats"]["fid"] == pytest.approx(results["reference"]["fid"], rel=1e-9)
    assert results["ref_stats"]["fid"] > 0 and results["ref_stats"]["num_reference"] == 7
    assert network.built == 3 and network.calls > 0
    # the Python interface gives the same number
    metrics = evaluate_generation(files["samples"], reference, CountingNetwork(), batch_size=4)
    assert metrics["fid"] == pytest.approx(results["reference"]["fid"], rel=1e-9)
