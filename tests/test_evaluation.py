"""Evaluation metrics and `mvq eval`, with stand-in VGG16 / Inception weights of the right shapes."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from mvq.evaluation import (GaussianAccumulator, ImageSet, InceptionV3, codebook_usage, evaluate_generation,
                            evaluate_reconstruction, evaluation_indices, frechet_distance, has_statistics,
                            load_statistics, psnr, save_statistics, ssim)
from mvq.storage.network_weights import INCEPTION, VGG16, MissingWeightsError


# 2048×2048 eigen-decompositions and Inception convolutions run on one thread: on a busy machine,
# spinning worker threads make them many times slower than a single thread.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Nothing here may try to download weights (local Unix sockets, used by DataLoader workers, are fine)."""
    connect = socket.socket.connect

    def refuse_internet(sock, address, *args, **kwargs):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"tried to open a network connection to {address}")
        return connect(sock, address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", refuse_internet)


# ---------------------------------------------------------------------------------------------
# stand-in weight files


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception with random weights (He-initialised so features vary with the image)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        net = FeatureExtractorInceptionV3("stand-in", ["2048"],
                                          feature_extractor_weights_path=str(folder / "empty.pth"))
    generator = torch.Generator().manual_seed(0)
    state = net.state_dict()
    for name, value in state.items():
        if name.endswith("conv.weight"):
            value.copy_(torch.randn(value.shape, generator=generator) * math.sqrt(2.0 / value[0].numel()))
        elif name == "fc.weight":
            value.copy_(torch.randn(value.shape, generator=generator) * 0.5)
    path = folder / INCEPTION.filename
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory) -> Path:
    """torchvision VGG16 convolutional weights (the part LPIPS uses), randomly initialised."""
    features = _vgg16_features()
    path = tmp_path_factory.mktemp("vgg") / VGG16.filename
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def _vgg16_features() -> torch.nn.Module:
    # Only the convolutional trunk: building the full VGG16 would initialise 120M classifier weights.
    import torchvision

    cfg = torchvision.models.vgg.cfgs["D"]
    return torchvision.models.vgg.make_layers(cfg)


@pytest.fixture(scope="module")
def inception(inception_weights) -> InceptionV3:
    return InceptionV3(inception_weights)


@pytest.fixture()
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home"


def run_cli(argv: list[str]) -> None:
    from mvq.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0


# ---------------------------------------------------------------------------------------------
# images


def smooth_images(n: int, size: int, seed: int, brightness: float = 0.0) -> np.ndarray:
    """n uint8 images N×size×size×3: upsampled random colour fields, optionally brightened."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(0, 1, (n, 3, 4, 4)).astype(np.float32))
    high = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    high = (high + brightness).clamp(0, 1)
    return (high * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return folder


# ---------------------------------------------------------------------------------------------
# Fréchet distance


def random_gaussian(rng: np.random.Generator, dim: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=(dim, dim))
    return rng.normal(size=dim), a @ a.T / dim + 0.1 * np.eye(dim)


def scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def test_frechet_distance_equals_scipy_computation():
    rng = np.random.default_rng(0)
    for dim in (1, 4, 32):
        mu1, sigma1 = random_gaussian(rng, dim)
        mu2, sigma2 = random_gaussian(rng, dim)
        ours, expected = frechet_distance(mu1, sigma1, mu2, sigma2), scipy_frechet(mu1, sigma1, mu2, sigma2)
        assert ours == pytest.approx(expected, rel=1e-6)
        assert ours > 0
    # commuting (diagonal) covariances have a closed form: ‖Δμ‖² + Σ (√a − √b)²
    a, b = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    closed_form = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed_form, rel=1e-12)


def test_frechet_distance_is_zero_for_a_set_against_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    for n in (500, 6):  # full-rank covariance, and fewer samples than dimensions (rank-deficient)
        features = rng.normal(size=(n, 16)) * rng.uniform(0.5, 2.0, 16)
        mu, sigma = features.mean(0), np.cov(features, rowvar=False)
        assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)
        distances = []
        for scale in (0.1, 0.5, 2.0):
            shift = scale * np.ones(16)
            shifted = features + shift
            d = frechet_distance(mu, sigma, shifted.mean(0), np.cov(shifted, rowvar=False))
            assert d == pytest.approx(shift @ shift, rel=1e-6)  # same covariance: only the mean term is left
            distances.append(d)
        assert distances == sorted(distances)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="same length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="3×3"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))


def test_streamed_statistics_equal_numpy_and_survive_a_file_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    features = rng.normal(size=(37, 5)) + 3.0
    acc = GaussianAccumulator(5)
    for chunk in np.array_split(features, 4):
        acc.update(torch.from_numpy(chunk).float())
    mu, sigma = acc.mean_and_covariance()
    as_float32 = features.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mu, as_float32.mean(0), rtol=1e-10)
    np.testing.assert_allclose(sigma, np.cov(as_float32, rowvar=False), rtol=1e-9, atol=1e-12)

    path = save_statistics(tmp_path / "ref.npz", mu, sigma, num_images=37)
    assert has_statistics(path)
    mu2, sigma2, meta = load_statistics(path)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2) and meta["num_images"] == 37


# ---------------------------------------------------------------------------------------------
# PSNR, SSIM, LPIPS


def test_psnr_and_ssim_of_identical_images_are_ideal():
    images = torch.from_numpy(smooth_images(3, 24, seed=3)).permute(0, 3, 1, 2)
    assert torch.isinf(psnr(images, images)).all()
    assert torch.allclose(ssim(images, images), torch.ones(3, dtype=torch.float64), atol=1e-12)
    floats = images.float() / 127.5 - 1
    assert torch.isinf(psnr(floats, floats)).all()
    assert torch.allclose(ssim(floats, floats), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_psnr_of_a_known_error():
    a = torch.randint(0, 200, (2, 3, 16, 16), dtype=torch.uint8)
    b = a + 10  # MSE exactly 100
    assert torch.allclose(psnr(a, b), torch.full((2,), 10 * math.log10(255 ** 2 / 100), dtype=torch.float64))


def test_ssim_equals_the_windowed_formula_written_out():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (1, 3, 14, 14)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).round()
    x = np.arange(11) - 5
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for c in range(3):
        for i in range(14 - 10):
            for j in range(14 - 10):
                pa, pb = a[0, c, i:i + 11, j:j + 11], b[0, c, i:i + 11, j:j + 11]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    ours = ssim(torch.from_numpy(a).to(torch.uint8), torch.from_numpy(b).to(torch.uint8))
    assert ours.item() == pytest.approx(np.mean(values), rel=1e-9)
    assert ours.item() < 0.99


def test_lpips_is_zero_for_identical_images_frozen_and_differentiable(vgg_weights):
    from mvq.losses.perceptual import LPIPS

    lpips = LPIPS(vgg_weights)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    assert torch.equal(lpips(x, x), torch.zeros(2))
    lpips.train()  # a parent's .train() must not switch on the package's dropout
    assert not lpips.training and not lpips.net.lin0.training
    d1, d2 = lpips(x, y), lpips(x, y)
    assert d1.shape == (2,) and (d1 > 0).all() and torch.equal(d1, d2)
    d1.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in lpips.parameters())


def test_missing_weights_messages_name_the_file(tmp_path, empty_torch_home):
    from mvq.losses.perceptual import LPIPS

    with pytest.raises(MissingWeightsError, match=VGG16.filename):
        LPIPS()
    with pytest.raises(MissingWeightsError, match="nowhere.pth"):
        LPIPS(tmp_path / "nowhere.pth")
    with pytest.raises(MissingWeightsError, match=INCEPTION.filename) as info:
        InceptionV3()
    assert str(empty_torch_home / "hub" / "checkpoints") in str(info.value)


def test_weights_found_in_the_torch_hub_cache(inception_weights, empty_torch_home):
    cache = empty_torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    os.symlink(inception_weights, cache / INCEPTION.filename)
    assert InceptionV3().weights_path == cache / INCEPTION.filename


def test_wrong_vgg_file_is_reported(tmp_path):
    from mvq.losses.perceptual import LPIPS

    path = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        LPIPS(path)


# ---------------------------------------------------------------------------------------------
# codebook usage


def test_codebook_usage_of_a_crafted_token_set():
    codes = torch.tensor([[0, 0, 0, 0], [1, 1, 2, 3]])  # frequencies 1/2, 1/4, 1/8, 1/8 of 8 codes
    usage = codebook_usage(codes, codebook_size=8)
    assert usage["usage_percent"] == 50.0 and usage["used_codes"] == 4
    assert usage["perplexity"] == pytest.approx(2 ** 1.75, rel=1e-12)  # entropy 1.75 bits
    assert codebook_usage(torch.arange(16), 16)["perplexity"] == pytest.approx(16.0)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        codebook_usage(torch.tensor([0, 9]), 8)


# ---------------------------------------------------------------------------------------------
# image sets


def test_npz_and_folder_image_sets(tmp_path):
    images = smooth_images(7, 16, seed=5)
    np.savez(tmp_path / "set.npz", images, np.arange(7))  # arr_0 images, arr_1 labels
    np.save(tmp_path / "set.npy", images)
    write_folder(tmp_path / "folder", images)
    (tmp_path / "folder" / "broken.png").write_bytes(b"not a png")
    expected = torch.from_numpy(images).permute(0, 3, 1, 2)
    for source in ("set.npz", "set.npy"):
        batches = list(ImageSet(tmp_path / source).batches(3))
        assert [b.shape[0] for b in batches] == [3, 3, 1]
        assert torch.equal(torch.cat(batches), expected)
        subset = torch.cat(list(ImageSet(tmp_path / source).batches(2, limit=4)))
        assert torch.equal(subset, expected[evaluation_indices(7, 4)])
    with pytest.warns(UserWarning, match="broken.png"):
        from_folder = torch.cat(list(ImageSet(tmp_path / "folder").batches(4)))
    assert torch.equal(from_folder, expected)
    resized = next(ImageSet(tmp_path / "set.npz", resolution=8).batches(7))
    assert resized.shape == (7, 3, 8, 8)


# ---------------------------------------------------------------------------------------------
# FID / IS end to end


@pytest.fixture(scope="module")
def generation_sets(tmp_path_factory, inception) -> dict:
    """Samples (as a folder and as an .npz) and reference images at another size, with their metrics."""
    root = tmp_path_factory.mktemp("generation")
    samples = smooth_images(6, 32, seed=6)
    np.savez(root / "samples.npz", samples)
    sets = {"samples_folder": write_folder(root / "samples", samples), "samples_npz": root / "samples.npz",
            "reference": write_folder(root / "reference", smooth_images(6, 48, seed=7, brightness=0.3))}
    sets["metrics"] = evaluate_generation(sets["samples_npz"], sets["reference"], inception, batch_size=4,
                                          isc_splits=2, kid=True, kid_subset_size=3)
    return sets


@pytest.mark.slow
def test_fid_and_inception_score_end_to_end_match_torch_fidelity(generation_sets, inception_weights):
    import torch_fidelity

    ours = generation_sets["metrics"]
    assert ours["fid"] > 0 and math.isfinite(ours["fid"])
    assert ours["num_samples"] == ours["num_reference"] == 6
    # torch-fidelity reading the same images: equal IS and KID mean equal per-image logits and features
    # (the reference is resized to the samples' 32 px first, as ours does).
    reference_32 = generation_sets["reference"].parent / "reference_32"
    write_folder(reference_32, torch.cat(list(ImageSet(generation_sets["reference"], 32).batches(6)))
                 .permute(0, 2, 3, 1).numpy())
    theirs = torch_fidelity.calculate_metrics(
        input1=str(generation_sets["samples_folder"]), input2=str(reference_32), isc=True, kid=True,
        kid_subset_size=3, isc_splits=2, feature_extractor_weights_path=str(inception_weights), cuda=False,
        cache=False, verbose=False, batch_size=4)
    assert ours["inception_score_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-6)
    assert ours["inception_score_mean"] > 1.0
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4, abs=1e-9)


@pytest.mark.slow
def test_eval_commands_stats_then_gen_give_the_same_fid(generation_sets, inception_weights, tmp_path, capsys):
    common = ["--inception-weights", str(inception_weights), "--device", "cpu", "--num-workers", "0",
              "--no-progress", "--batch-size", "4"]
    stats = tmp_path / "reference_stats.npz"
    run_cli(["eval", "stats", "--data", str(generation_sets["reference"]), "--out", str(stats),
             "--resolution", "32", *common])
    assert load_statistics(stats)[2]["num_images"] == 6
    run_cli(["eval", "gen", "--samples", str(generation_sets["samples_npz"]), "--ref", str(stats),
             "--isc-splits", "2", "--out", str(tmp_path / "gen.json"), *common])
    report = json.loads((tmp_path / "gen.json").read_text())
    expected = generation_sets["metrics"]
    assert report["metrics"]["fid"] == pytest.approx(expected["fid"], rel=1e-6)  # statistics vs images
    assert report["metrics"]["inception_score_mean"] == pytest.approx(expected["inception_score_mean"], rel=1e-9)
    assert report["metrics"]["num_reference"] == 6
    assert report["settings"]["inception_weights"] == str(inception_weights)
    table = capsys.readouterr().out
    assert "FID" in table and "Inception Score" in table


def test_eval_command_reports_missing_inception_weights(tmp_path, empty_torch_home, capsys):
    from mvq.cli import main

    np.savez(tmp_path / "samples.npz", smooth_images(2, 16, seed=10))
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "gen", "--samples", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "samples.npz"),
              "--device", "cpu"])
    assert exit_info.value.code == 1
    assert INCEPTION.filename in capsys.readouterr().err


def test_eval_gen_checks_the_reference_before_running_inception(tmp_path, empty_torch_home, capsys):
    """A wrong --ref is reported at once: not after Inception has gone over every sample, nor as missing weights."""
    from mvq.cli import main

    class CountingInception(torch.nn.Module):
        calls = 0

        def forward(self, images):
            CountingInception.calls += 1
            return torch.zeros(images.shape[0], 2048), torch.zeros(images.shape[0], 1008)

    np.savez(tmp_path / "samples.npz", smooth_images(2, 16, seed=10))
    not_images = tmp_path / "notes.txt"
    not_images.write_text("x")
    for ref, message in [(tmp_path / "missing.npz", "missing.npz"), (not_images, "notes.txt")]:
        with pytest.raises((FileNotFoundError, ValueError), match=message):
            evaluate_generation(tmp_path / "samples.npz", ref, CountingInception())
        assert CountingInception.calls == 0
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "gen", "--samples", str(tmp_path / "samples.npz"), "--ref", str(ref), "--device", "cpu"])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert message in err and INCEPTION.filename not in err
    np.savez(tmp_path / "stats_only.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="KID needs reference images"):
        evaluate_generation(tmp_path / "samples.npz", tmp_path / "stats_only.npz", CountingInception(), kid=True)
    assert CountingInception.calls == 0


# ---------------------------------------------------------------------------------------------
# reconstruction evaluation


class StubTokenizer(torch.nn.Module):
    """Shaped like an MQ-VAE output: reconstruction, codes (B×K), keep_mask/scores (B×H×W)."""

    def __init__(self, offset: float = 0.0, grid: int = 4, keep: int = 5, codebook_size: int = 16):
        super().__init__()
        self.config = SimpleNamespace(codebook_size=codebook_size)
        self.offset, self.grid, self.keep = offset, grid, keep

    def forward(self, images):
        b = images.shape[0]
        scores = torch.sigmoid(4 * F.adaptive_avg_pool2d(images.mean(1, keepdim=True), self.grid)).view(b, -1)
        positions = scores.topk(self.keep, dim=1).indices.sort(dim=1).values
        keep_mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, positions, True)
        codes = (positions * 7 + (images.mean((1, 2, 3)) > 0).long()[:, None]) % self.config.codebook_size
        g = self.grid
        return SimpleNamespace(reconstruction=(images + self.offset).clamp(-1, 1), codes=codes,
                               keep_mask=keep_mask.view(b, g, g), scores=scores.view(b, g, g))


class StubInception(torch.nn.Module):
    """Cheap stand-in for Inception in the distributed test: a fixed projection to 24 features."""

    feature_dim = 24

    def __init__(self):
        super().__init__()
        self.register_buffer("projection", torch.randn(3 * 4 * 4, 24, generator=torch.Generator().manual_seed(0)))

    def forward(self, images):
        pooled = F.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)
        return pooled @ self.projection, None


def tiny_dataset(n: int = 7, size: int = 32) -> list[dict]:
    images = torch.from_numpy(smooth_images(n, size, seed=11)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return [{"image": image, "label": 0} for image in images]


def test_reconstruction_metrics_of_a_perfect_and_an_imperfect_tokenizer():
    dataset = tiny_dataset()
    perfect = evaluate_reconstruction(StubTokenizer(), dataset, inception=StubInception(), batch_size=3)
    assert math.isinf(perfect["psnr"]) and perfect["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert abs(perfect["rfid"]) < 1e-6 and perfect["num_images"] == 7

    # codebook usage and keep scores, computed image by image here
    stub = StubTokenizer()
    outs = [stub(item["image"][None]) for item in dataset]
    codes = torch.cat([o.codes for o in outs])
    expected_usage = codebook_usage(codes, 16)
    kept = torch.cat([o.scores[o.keep_mask] for o in outs]).double().mean().item()
    masked = torch.cat([o.scores[~o.keep_mask] for o in outs]).double().mean().item()
    assert perfect["codebook_usage_percent"] == expected_usage["usage_percent"]
    assert perfect["codebook_perplexity"] == pytest.approx(expected_usage["perplexity"], rel=1e-12)
    assert perfect["keep_score_kept"] == pytest.approx(kept, rel=1e-6)  # float32 scores, other batching
    assert perfect["keep_score_masked"] == pytest.approx(masked, rel=1e-6)
    assert perfect["keep_score_kept"] > perfect["keep_score_masked"]

    imperfect = evaluate_reconstruction(StubTokenizer(offset=0.1), dataset, batch_size=4, num_images=5)
    assert imperfect["num_images"] == 5 and "rfid" not in imperfect and "lpips" not in imperfect
    assert 10 < imperfect["psnr"] < 40 and imperfect["ssim"] < 1


def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        result = evaluate_reconstruction(StubTokenizer(offset=0.05), tiny_dataset(), inception=StubInception(),
                                         batch_size=2)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_reconstruction_evaluation_equals_a_single_process(tmp_path):
    import torch.multiprocessing as mp

    single = evaluate_reconstruction(StubTokenizer(offset=0.05), tiny_dataset(), inception=StubInception(),
                                     batch_size=2)
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        sharded = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert sharded.keys() == single.keys()
        for key, value in single.items():
            assert sharded[key] == pytest.approx(value, rel=1e-6), key  # float32 stub, other batches


@pytest.mark.slow
def test_eval_recon_command_on_a_tiny_mqvae(tmp_path, inception_weights, vgg_weights, capsys):
    from mvq.models.mqvae import MQVAE
    from tests.conftest import TINY_MQVAE

    MQVAE.from_config(TINY_MQVAE).save_pretrained(tmp_path / "vae")
    data = write_folder(tmp_path / "images", smooth_images(5, 40, seed=12))
    run_cli(["eval", "recon", "--vae", str(tmp_path / "vae"), "--data", str(data), "--inception-weights",
             str(inception_weights), "--vgg-weights", str(vgg_weights), "--device", "cpu", "--num-workers", "0",
             "--batch-size", "2", "--no-progress", "--out", str(tmp_path / "recon.json")])
    report = json.loads((tmp_path / "recon.json").read_text())
    metrics = report["metrics"]
    assert metrics["num_images"] == 5 and report["settings"]["resolution"] == 32
    for key in ("rfid", "psnr", "ssim", "lpips", "codebook_perplexity", "keep_score_kept", "keep_score_masked"):
        assert math.isfinite(metrics[key]), key
    assert 0 < metrics["codebook_usage_percent"] <= 100 and metrics["codebook_size"] == TINY_MQVAE["codebook_size"]
    assert metrics["lpips"] > 0 and metrics["rfid"] > 0
    assert "rFID" in capsys.readouterr().out


def test_eval_recon_command_reads_a_dataset_config(tmp_path):
    from mvq.models.mqvae import MQVAE
    from tests.conftest import TINY_MQVAE

    MQVAE.from_config(TINY_MQVAE).save_pretrained(tmp_path / "vae")
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  dataset: synthetic\n  resolution: 64\n  num_val: 3\n")
    run_cli(["eval", "recon", "--vae", str(tmp_path / "vae"), "--data", str(config), "--no-fid", "--no-lpips",
             "--device", "cpu", "--num-workers", "0", "--no-progress", "--out", str(tmp_path / "recon.json")])
    metrics = json.loads((tmp_path / "recon.json").read_text())["metrics"]
    assert metrics["num_images"] == 3 and "rfid" not in metrics and "lpips" not in metrics
    assert math.isfinite(metrics["psnr"]) and metrics["ssim"] < 1


def test_eval_command_help_and_light_import():
    import subprocess
    import sys

    code = ("import sys; from mvq.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'torch_fidelity', 'lpips', 'scipy') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch_fidelity" not in out and "lpips" not in out
    from mvq.cli import build_parser

    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["eval", "gen", "--help"])
    assert done.value.code == 0


def test_image_folder_reads_photos_upright(tmp_path):
    from PIL import Image

    from mvq.evaluation import ImageFolder

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; viewers rotate by 90 degrees
    Image.new("RGB", (8, 4), (200, 10, 10)).save(tmp_path / "photo.jpg", exif=exif)
    assert ImageFolder(tmp_path)[0].shape == (3, 8, 4)
