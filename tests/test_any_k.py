"""Any-K: one MQ-VAE, any token budget. The kept cells at a budget are a prefix of one ranking."""

import pytest
import torch

from mvq.errors import InvalidInputError
from mvq.models.mqvae import MQVAE, MQVAEConfig
from tests.conftest import TINY_MQVAE
from tests.test_sampling import TINY_VAE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return MQVAE.from_config(TINY_VAE).eval()


def images(n=3, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_tokens_at_a_budget_are_a_subset_of_those_at_every_larger_one(vae):
    x = images()
    budgets = [1, 4, 9, 16, 40, 64]
    tokens = {k: vae.tokenize(x, keep=k) for k in budgets}
    for small, large in zip(budgets, budgets[1:]):
        for i in range(len(x)):
            codes_s, pos_s = tokens[small][0][i].tolist(), tokens[small][1][i].tolist()
            codes_l, pos_l = tokens[large][0][i].tolist(), tokens[large][1][i].tolist()
            assert set(pos_s) <= set(pos_l)
            at = dict(zip(pos_l, codes_l))
            assert [at[p] for p in pos_s] == codes_s  # a cell's code does not depend on the budget
    assert all(t[0].shape == (3, k) for k, t in tokens.items())


def test_the_default_budget_is_the_models_k_and_unchanged(vae):
    x = images(seed=1)
    codes, positions = vae.tokenize(x)
    assert codes.shape[1] == vae.config.num_tokens == 16
    same = vae.tokenize(x, keep=16)
    assert torch.equal(codes, same[0]) and torch.equal(positions, same[1])
    ratio = vae.tokenize(x, keep=0.25)
    assert torch.equal(positions, ratio[1])
    with torch.no_grad():
        out = vae(x, keep=8)
    assert out.codes.shape == (3, 8) and int(out.keep_mask.flatten(1).sum(1).max()) == 8
    assert vae.detokenize(*vae.tokenize(x, keep=8)).shape == (3, 3, 16, 16)


@pytest.mark.parametrize("keep", [0, 65, -1, 1.5, 0.0, True, 3.2e-9])
def test_budgets_out_of_range_are_one_line(vae, keep):
    with pytest.raises(InvalidInputError, match="keep"):
        vae.tokenize(images(1), keep=keep)


def test_any_k_training_draws_budgets_from_the_schedule():
    config = MQVAEConfig.from_mapping({**TINY_VAE, "train_keep_min": 1 / 32})  # K_min 2 of 64 cells, K 16
    torch.manual_seed(0)
    drawn = {config.draw_train_keep() for _ in range(300)}
    assert drawn == set(range(2, 17))
    pow2 = MQVAEConfig.from_mapping({**TINY_VAE, "train_keep_min": 1 / 32, "train_keep_schedule": "pow2"})
    assert {pow2.draw_train_keep() for _ in range(100)} == {2, 4, 8, 16}
    fixed = MQVAEConfig.from_mapping(TINY_VAE)
    assert not fixed.any_k and config.any_k
    per_image = MQVAEConfig.from_mapping({**TINY_VAE, "train_keep_min": 1 / 32, "train_keep_per": "image"})
    counts = per_image.draw_train_keep(500)
    assert counts.shape == (500,) and set(counts.tolist()) == set(range(2, 17))
    pow2_images = MQVAEConfig.from_mapping({**TINY_VAE, "train_keep_min": 1 / 32, "train_keep_schedule": "pow2",
                                            "train_keep_per": "image"})
    assert set(pow2_images.draw_train_keep(200).tolist()) == {2, 4, 8, 16}


@pytest.mark.parametrize("bad", [{"train_keep_min": 0.5}, {"train_keep_min": 0.001},
                                 {"train_keep_min": 0.1, "train_keep_schedule": "x"},
                                 {"train_keep_min": 0.1, "train_keep_per": "epoch"}])
def test_any_k_settings_are_validated(bad):
    from mvq.config import ConfigError

    with pytest.raises(ConfigError, match="train_keep"):
        MQVAEConfig.from_mapping({**TINY_VAE, **bad})


@pytest.mark.slow
@pytest.mark.parametrize("per", ["batch", "image"])
def test_an_any_k_run_trains_at_drawn_budgets(tmp_path, per):
    from mvq.demo.report import read_scalars
    from mvq.training.run import train
    from tests.train_helpers import tiny_stage1_config

    config = tiny_stage1_config(tmp_path, model={"train_keep_min": 0.125, "train_full_keep_pass": True,
                                                 "train_keep_per": per},
                                trainer={"max_steps": 4, "val_check_interval": 4},
                                run={"image_every_n_steps": 0})
    run = train(str(config), [], run_dir=str(tmp_path / "run"))
    steps, budgets = read_scalars(run / "logs")["train/train_keep"]
    k = MQVAEConfig.from_mapping(TINY_MQVAE).num_tokens
    assert len(budgets) == 4 and all(int(0.125 * 64) <= b <= k for b in budgets)


def test_reconstruct_takes_a_budget(vae, tmp_path, capsys):
    from PIL import Image

    from mvq.cli import main

    folder = vae.save_pretrained(tmp_path / "vae")
    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "in" / "a.png")
    with pytest.raises(SystemExit) as done:
        main(["reconstruct", str(tmp_path / "in"), "--vae", str(folder), "--keep", "4", "--out",
              str(tmp_path / "out")])
    assert done.value.code == 0
    assert "trained to keep 16 cells" in capsys.readouterr().err
    mask = Image.open(tmp_path / "out" / "a_keep_mask.png")
    assert mask.size == (16, 16)


def test_eval_recon_measures_a_budget(vae, tmp_path, capsys):
    import json

    from mvq.cli import main

    folder = vae.save_pretrained(tmp_path / "vae")
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  dataset: synthetic\n  resolution: 16\n  num_val: 4\n")
    results = {}
    for keep in ("4", "64"):
        out = tmp_path / f"recon_{keep}.json"
        with pytest.raises(SystemExit) as done:
            main(["eval", "recon", "--vae", str(folder), "--data", str(config), "--keep", keep, "--no-fid",
                  "--no-lpips", "--device", "cpu", "--num-workers", "0", "--no-progress", "--out", str(out)])
        assert done.value.code == 0
        results[keep] = json.loads(out.read_text())
    assert results["4"]["settings"]["keep"] == 4 and results["64"]["settings"]["keep"] == 64
    assert results["4"]["metrics"]["psnr"] != results["64"]["metrics"]["psnr"]
    assert results["64"]["metrics"]["keep_score_masked"] is None  # every cell kept: no masked cell to score
    assert results["4"]["metrics"]["keep_score_masked"] is not None


# --- a budget per image ------------------------------------------------------------------------------------------

def test_per_image_budgets_match_each_image_alone(vae):
    x = images(3, seed=2)
    counts = torch.tensor([3, 16, 40])
    with torch.no_grad():
        together = vae(x, keep=counts)
        alone = [vae(x[i:i + 1], keep=int(k)) for i, k in enumerate(counts)]
    assert together.keep_mask.flatten(1).sum(1).tolist() == counts.tolist()
    for i, out in enumerate(alone):
        assert torch.equal(together.keep_mask[i], out.keep_mask[0])
        torch.testing.assert_close(together.reconstruction[i], out.reconstruction[0], atol=1e-5, rtol=0)
    codes, positions = vae.tokenize(x, keep=counts)
    assert codes.shape == positions.shape == (3, 40)
    for i, k in enumerate(counts.tolist()):
        own_codes, own_positions = vae.tokenize(x[i:i + 1], keep=k)
        assert torch.equal(codes[i, :k], own_codes[0]) and torch.equal(positions[i, :k], own_positions[0])
        assert (codes[i, k:] == -1).all() and (positions[i, k:] == -1).all()
    # rows of different lengths decode as each image's own tokens alone
    decoded = vae.detokenize(codes, positions)
    torch.testing.assert_close(decoded, together.reconstruction, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [torch.tensor([0, 3, 3]), torch.tensor([3, 65, 3]), torch.tensor([1.0, 2.0, 3.0]),
                                 torch.tensor([[3, 3, 3]])])
def test_bad_per_image_budgets_are_one_line(vae, bad):
    with pytest.raises(InvalidInputError, match="per-image keep counts"):
        vae.tokenize(images(3), keep=bad)


def test_smallest_keep_meets_the_target_where_one_fewer_does_not(vae):
    from mvq.models.keep_budget import psnr_at_least, smallest_keep

    x = images(4, seed=3)
    with torch.no_grad():
        full = vae(x, keep=64).reconstruction
    from mvq.evaluation.image_metrics import psnr, to_uint8

    reachable = psnr(to_uint8(full.clamp(-1, 1)), to_uint8(x))
    target_db = float(reachable.min()) - 0.05  # every image meets it with every cell kept
    meets = psnr_at_least(target_db)
    counts, met = smallest_keep(vae, x, meets, low=2)
    assert met.all() and ((counts >= 2) & (counts <= 64)).all()
    with torch.no_grad():
        assert meets(vae(x, keep=counts).reconstruction, x).all()
        fewer = counts - 1
        moved = counts > 2
        assert not meets(vae(x, keep=fewer.clamp_min(1)).reconstruction, x)[moved].any()
    # A target no budget meets: the largest count, and `met` says so.
    counts, met = smallest_keep(vae, x, psnr_at_least(200.0), high=20)
    assert (counts == 20).all() and not met.any()


def test_quality_targets_parse_or_say_what_they_take():
    from mvq.models.keep_budget import parse_quality_target

    assert callable(parse_quality_target("psnr=24"))
    for bad in ["psnr", "psnr=x", "ssim=0.9", "lpips=0.2"]:  # lpips needs its network
        with pytest.raises(InvalidInputError, match="psnr=DB"):
            parse_quality_target(bad)


def test_score_mass_budgets_grow_with_the_mass_and_keep_the_best_cells(vae):
    from mvq.models.keep_budget import calibrate_mass, psnr_at_least, score_mass_keep

    x = images(4, seed=5)
    small, large = score_mass_keep(vae, x, 0.2), score_mass_keep(vae, x, 0.8)
    assert (small <= large).all() and (small >= 1).all() and (large <= 64).all()
    assert (score_mass_keep(vae, x, 1.0) >= 63).all()  # all the mass: (nearly) every cell
    with torch.no_grad():
        scores = vae.masker.score_net(vae.encoder(x))
    ranked = scores.sort(dim=1, descending=True).values
    for i, k in enumerate(large.tolist()):  # the fewest cells holding 80 % of the score
        assert ranked[i, :k].sum() >= 0.8 * ranked[i].sum() - 1e-5
        assert k == 1 or ranked[i, :k - 1].sum() < 0.8 * ranked[i].sum()
    assert calibrate_mass(vae, x, psnr_at_least(-1.0), fraction=1.0, steps=4) == 2 ** -4  # met at any budget
    with pytest.raises(InvalidInputError, match="score mass"):
        score_mass_keep(vae, x, 0.0)


# --- tokens in rank order, and generation that stops after k tokens -----------------------------------------------

def test_rank_order_lists_the_same_tokens_most_important_first(vae):
    x = images(3, seed=6)
    raster = vae.tokenize(x)
    rank = vae.tokenize(x, order="rank")
    with torch.no_grad():
        scores = vae(x).scores.flatten(1)
    for i in range(3):
        assert dict(zip(raster[1][i].tolist(), raster[0][i].tolist())) == dict(zip(rank[1][i].tolist(),
                                                                                    rank[0][i].tolist()))
        assert (scores[i][rank[1][i]].diff() <= 0).all()  # falling scores
        for k in (1, 5, 16):  # every prefix is the image's tokens at that budget
            codes, positions = vae.tokenize(x[i:i + 1], keep=k)
            assert set(rank[1][i, :k].tolist()) == set(positions[0].tolist())
    counts = torch.tensor([3, 9, 16])
    per_image = vae.tokenize(x, keep=counts, order="rank")
    for i, k in enumerate(counts.tolist()):
        assert torch.equal(per_image[1][i, :k], rank[1][i, :k]) and (per_image[1][i, k:] == -1).all()
    with pytest.raises(InvalidInputError, match="token order"):
        vae.tokenize(x, order="score")


@pytest.mark.parametrize("token_order", ["raster", "rank"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_stops_after_k_tokens_as_a_prefix_of_the_whole(token_order, use_cache):
    from mvq.models.sampling import SamplingError
    from tests.test_sampling import seeded, tiny_model

    model = tiny_model(num_classes=3, token_order=token_order).double()
    full = model.generate(3, labels=[0, 1, 2], generator=[seeded(i) for i in range(3)], use_cache=use_cache)
    for k in (1, 3, 6):
        part = model.generate(3, labels=[0, 1, 2], generator=[seeded(i) for i in range(3)], num_tokens=k,
                              use_cache=use_cache)
        assert part[0].shape == (3, k)
        assert torch.equal(part[0], full[0][:, :k]) and torch.equal(part[1], full[1][:, :k])
    if token_order == "rank":  # positions need not ascend: the raster constraint is for raster-order models
        assert any(bool((row.diff() < 0).any()) for row in full[1])
    with pytest.raises(SamplingError, match="num_tokens must be in 1..6"):
        model.generate(1, labels=[0], num_tokens=7)


def test_a_rank_order_store_trains_a_rank_order_stackformer(tmp_path):
    from mvq.config import ConfigError
    from mvq.data.token_store import TokenStore
    from mvq.inference.tokenizing import tokenize_dataset
    from mvq.training.stage2_config import parse_stage2
    from tests.test_token_store import ImageSet, TINY_VAE as STORE_VAE

    torch.manual_seed(0)
    model = MQVAE.from_config(STORE_VAE).eval()
    vae_dir = model.save_pretrained(tmp_path / "vae")
    tokenize_dataset(model, ImageSet(4), tmp_path / "rank", rank=0, world_size=1, progress=False, order="rank")
    store = TokenStore(tmp_path / "rank")
    assert store.header.order == "rank"
    assert torch.equal(store[1]["positions"], model.tokenize(ImageSet(4).images[1:2], order="rank")[1][0])
    raw = {"stage": 2, "vae": str(vae_dir), "data": {"tokens": str(tmp_path / "rank")},
           "model": {"code_layers": 1, "position_layers": 1, "dim": 32, "heads": 2}}
    assert parse_stage2(raw).model.token_order == "rank"
    with pytest.raises(ConfigError, match="token_order is raster"):
        parse_stage2({**raw, "model": {**raw["model"], "token_order": "raster"}})


def test_a_variable_length_row_scores_its_tokens_then_the_end():
    """A row of L tokens then -1 is scored as those L tokens (as a longer row scores them: causal) plus
    the end-of-image output at step L; nothing after."""
    from tests.test_sampling import tiny_model

    model = tiny_model(num_classes=2, variable_length=True).double()
    codes = torch.tensor([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 6, 1]])
    positions = torch.tensor([[0, 2, 5, 7, 9, 14], [1, 3, 4, 6, 10, 11]])
    labels = torch.tensor([0, 1])
    length = 3
    padded_codes, padded_positions = codes.clone(), positions.clone()
    padded_codes[:, length:] = -1
    padded_positions[:, length:] = -1
    full = model(codes, positions, labels)
    code_lp = full.code_logits.double().log_softmax(-1)
    position_lp = full.position_logits.double().log_softmax(-1)
    rows = torch.arange(2)[:, None]
    steps = torch.arange(length)[None]
    expected = (code_lp[rows, steps, codes[:, :length]].sum(1) + position_lp[rows, steps, positions[:, :length]].sum(1)
                + code_lp[:, length, model.config.end_code])
    assert torch.allclose(model.log_likelihood(padded_codes, padded_positions, labels).double(), expected, atol=1e-4)
    whole = code_lp[rows, torch.arange(6)[None], codes].sum(1) + position_lp[rows, torch.arange(6)[None], positions].sum(1)
    assert torch.allclose(model.log_likelihood(codes, positions, labels).double(), whole, atol=1e-4)


@pytest.mark.parametrize("token_order", ["raster", "rank"])
def test_a_variable_length_model_ends_images_where_it_draws_the_end(token_order):
    from tests.test_sampling import seeded, tiny_model

    model = tiny_model(num_classes=3, class_dropout=0.1, variable_length=True, token_order=token_order).double()
    with torch.no_grad():  # point the end output along the typical hidden state: images end at different steps
        codes = torch.randint(0, 32, (16, 6), generator=seeded(5))
        hidden = model.code_norm(model.code_transformer(model.code_inputs(codes, torch.arange(6).expand(16, 6), 0)))
        model.code_head.weight[model.config.end_code] = hidden.mean((0, 1)) * 0.3
    generators = lambda: [seeded(i) for i in range(8)]  # noqa: E731
    labels = [0, 1, 2, 0, 1, 2, 0, 1]
    cached = model.generate(8, labels=labels, generator=generators(), top_k=None, top_p=None, cfg_scale=1.5)
    uncached = model.generate(8, labels=labels, generator=generators(), top_k=None, top_p=None, cfg_scale=1.5,
                              use_cache=False)
    assert torch.equal(cached[0], uncached[0]) and torch.equal(cached[1], uncached[1])
    codes, positions = cached
    lengths = (codes >= 0).sum(1)
    assert (lengths >= 1).all() and len(set(lengths.tolist())) > 1, lengths  # never empty; not all alike
    for row, length in zip(range(8), lengths.tolist()):  # tokens first, then only -1
        assert (codes[row, :length] >= 0).all() and (codes[row, length:] == -1).all()
        assert (positions[row, :length] >= 0).all() and (positions[row, length:] == -1).all()
        assert len(set(positions[row, :length].tolist())) == length
        if token_order == "raster":
            assert (positions[row, :length].diff() > 0).all()
    exact = model.generate(8, labels=labels, generator=generators(), top_k=None, top_p=None, num_tokens=4)
    assert exact[0].shape == (8, 4) and (exact[0] >= 0).all()  # a requested count: no image ends before it


@pytest.mark.slow
def test_a_store_with_a_budget_per_image_trains_a_variable_length_stackformer(tmp_path):
    from mvq.data.token_store import TokenStore
    from mvq.inference.tokenizing import tokenize_dataset
    import yaml

    from mvq.models.stackformer import Stackformer
    from mvq.training.run import export, train
    from mvq.training.stage2_config import parse_stage2
    from tests.test_token_store import ImageSet, TINY_VAE as STORE_VAE

    torch.manual_seed(0)
    model = MQVAE.from_config(STORE_VAE).eval()
    vae_dir = model.save_pretrained(tmp_path / "vae")
    data = ImageSet(8)
    tokenize_dataset(model, data, tmp_path / "mixed", rank=0, world_size=1, progress=False, order="rank",
                     budget=lambda images: torch.arange(len(images)) % 3 * 4 + 2, max_tokens=12)
    store = TokenStore(tmp_path / "mixed")
    assert store.header.variable_length and sorted({store[i]["length"] for i in range(8)}) == [2, 6, 10]
    raw = {"stage": 2, "vae": str(vae_dir), "data": {"tokens": str(tmp_path / "mixed"), "val_fraction": 0.25,
                                                      "batch_size": 2, "num_workers": 0},
           "model": {"code_layers": 1, "position_layers": 1, "dim": 32, "heads": 2},
           "trainer": {"max_steps": 3, "num_sanity_val_steps": 0, "enable_model_summary": False},
           "run": {"image_every_n_steps": 0}}
    config = parse_stage2(raw).model
    assert config.variable_length and config.num_tokens == 12 and config.token_order == "rank"
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(raw))
    run = train(str(tmp_path / "stage2.yaml"), [], run_dir=str(tmp_path / "run"))
    trained = Stackformer.from_pretrained(export(run, tmp_path / "sf")).eval()
    assert trained.config.variable_length
    codes, positions = trained.generate(2, labels=[0, 1], generator=[torch.Generator().manual_seed(i) for i in range(2)])
    images = model.detokenize(codes, positions)  # rows that end early decode as they are
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


@pytest.mark.parametrize("num_tokens", [4, 64])
def test_a_stackformer_of_another_budget_samples_through_the_pipeline(vae, num_tokens):
    """A Stackformer trained on a store of `--keep k` (k other than the MQ-VAE's K = 16 of 64 cells) samples
    k tokens per image and the MQ-VAE decodes them, as it decodes any subset of its cells."""
    from mvq.inference.pipeline import MVQPipeline
    from tests.test_sampling import tiny_model

    sf = tiny_model(num_classes=3, grid_size=vae.config.grid_size, num_tokens=num_tokens,
                    codebook_size=vae.config.codebook_size)
    images = MVQPipeline(sf, vae)(labels=[0, 1, 2], seed=0)
    assert images.shape == (3, 16, 16, 3)
    codes, positions = sf.generate(1, labels=[1], generator=[torch.Generator().manual_seed(0)])
    assert codes.shape == (1, num_tokens) and torch.isfinite(vae.detokenize(codes, positions)).all()


def test_a_vqgan_still_takes_only_stackformers_of_its_full_grid():
    from mvq.inference.pipeline import MVQPipeline
    from mvq.models.vqgan import VQGAN
    from tests.test_sampling import tiny_model

    vqgan = VQGAN.from_config(dict(resolution=16, ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[],
                                   z_channels=16, codebook_size=32, codebook_dim=8)).eval()
    sf = tiny_model(num_classes=3, grid_size=vqgan.config.grid_size, num_tokens=vqgan.config.num_tokens - 1,
                    codebook_size=32)
    with pytest.raises(ValueError, match="num_tokens: Stackformer 63 vs VQGAN 64"):
        MVQPipeline(sf, vqgan)


def rate_distortion_study():
    """experiments/any_k/rate_distortion.py as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "any_k" / "rate_distortion.py"
    spec = importlib.util.spec_from_file_location("rate_distortion", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


def test_rate_distortion_arms_draw_k_per_batch_or_per_image():
    """The study's any-K arms (and their random-mask twin) draw K as asked; drawn per image, no arm repeats another."""
    study = rate_distortion_study()
    per_batch, per_image = study.arms(256), study.arms(256, "image")
    assert [name for name in per_batch if name.startswith("fixed")] == ["fixed-k16", "fixed-k32", "fixed-k64", "fixed-k128"]
    assert "model.train_keep_per=image" not in per_batch["any-k"] + per_batch["any-k-random"]
    assert "model.train_keep_per=image" in per_batch["any-k-per-image"]
    assert "any-k-per-image" not in per_image
    for name in ("any-k", "any-k-random", "any-k-full-pass"):
        assert "model.train_keep_per=image" in per_image[name], name
    assert len({tuple(sorted(overrides)) for overrides in per_image.values()}) == len(per_image)
    # Its verdicts: lower LPIPS is better, named in the study's words; within 2 standard errors, no verdict.
    other = torch.linspace(0.2, 0.4, 50)
    noise = 0.01 * torch.randn(50, generator=torch.Generator().manual_seed(0))
    lower = study.paired_lpips(other - 0.05 + noise, other, "adaptive better", "random better")
    assert lower["verdict"] == "adaptive better" and lower["lpips_difference"] == pytest.approx(-0.05 + float(noise.mean()))
    assert study.paired_lpips(other + 0.05 + noise, other, "adaptive better", "random better")["verdict"] == "random better"
    assert study.paired_lpips(other + noise - noise.mean(), other, "a", "b")["verdict"].startswith("no difference")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rate_distortion_study_stops_in_time_and_continues_from_its_kept_copy(tmp_path, monkeypatch):
    """A study longer than a session: stopped by --seconds, kept in --keep, continued on a clone without RUNS."""
    import json
    import shutil
    import sys
    from pathlib import Path

    from tests.train_helpers import tiny_stage1_config

    study = rate_distortion_study()
    config = tiny_stage1_config(tmp_path, loss={"disc_start": None},
                                run={"image_every_n_steps": 0, "checkpoint_every_n_steps": 1})
    runs, keep = tmp_path / "runs", tmp_path / "keep"
    argv = ["rate_distortion.py", "--config", str(config), "--name", "tiny", "--steps", "3", "--runs", str(runs),
            "--keep", str(keep), "--stage", "train", "--results", str(tmp_path), "--arms", "any-k"]
    monkeypatch.setattr(sys, "argv", [*argv, "--seconds", "0"])
    with pytest.raises(SystemExit, match="training stopped in any-k at step 0 .*run the same command again"):
        study.main()
    monkeypatch.setattr(sys, "argv", argv)
    study.main()
    assert study.trained_steps(runs / "any-k") == 3 == study.trained_steps(keep / "any-k")
    assert json.loads((keep / "wall_seconds.json").read_text())["any-k"] > 0
    shutil.rmtree(runs / "any-k")  # a fresh clone: only the kept copy
    start_process = study.subprocess.Popen

    def no_training(command, *args, **kwargs):  # nothing left to train: only git's ignore check may run
        assert command[0] == "git", f"started {command}"
        return start_process(command, *args, **kwargs)

    monkeypatch.setattr(study.subprocess, "Popen", no_training)
    study.main()
    assert study.trained_steps(runs / "any-k") == 3

    class StoppedMidRun:
        """A training that reaches step 3 of 10, then is stopped at the deadline and exits as `mvq train` does."""

        def __init__(self, command, **_):
            study.keep_run(runs / "any-k", Path(command[command.index("--run-dir") + 1]))
            self.code = None

        def poll(self):
            return self.code

        def terminate(self):
            self.code = study.STOPPED_EXIT

        def wait(self):
            return self.code

    later, later_keep = tmp_path / "later", tmp_path / "later-keep"
    monkeypatch.setattr(study.subprocess, "Popen", StoppedMidRun)
    monkeypatch.setattr(study, "require_committable", lambda kept: None)  # git's check would meet the fake process
    monkeypatch.setattr(sys, "argv", [*argv[:argv.index("--steps")], "--steps", "10", "--runs", str(later), "--keep",
                                      str(later_keep), *argv[argv.index("--stage"):], "--seconds", "1"])
    with pytest.raises(SystemExit, match=r"training stopped in any-k at step 3 \(from 0\)"):
        study.main()
    assert study.trained_steps(later_keep / "any-k") == 3  # kept, though the training was stopped


def test_generation_study_stops_in_time_continues_and_never_measures_a_kept_score_again(vae, tmp_path, monkeypatch):
    """The generation study across sessions: a Stackformer stopped at the deadline continues where it stopped, a
    kept score is never measured again (on a clone without RUNS), and the results are read from the kept scores."""
    import importlib.util
    import json
    import shutil
    import sys
    from pathlib import Path

    import numpy as np

    from mvq.models.stackformer import Stackformer
    from tests.train_helpers import tiny_stage1_config

    path = Path(__file__).resolve().parents[1] / "experiments" / "any_k" / "generation_vs_k.py"
    spec = importlib.util.spec_from_file_location("generation_vs_k", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    tokenizer = vae.save_pretrained(tmp_path / "vae")
    (tmp_path / "stats.npz").write_bytes(b"")
    data = tiny_stage1_config(tmp_path)
    done = {"train": [], "sample": [], "score": []}

    def train_arm(run, config, overrides, steps, log, timing, timing_file, deadline):
        """Two steps a call, then stopped (as at a deadline) unless the run has all its steps."""
        if study.trained_steps(run) >= steps:
            return True
        reached = min(steps, study.trained_steps(run) + 2)
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {}, "mvq_state": {}, "global_step": reached}, run / "checkpoints" / "last.ckpt")
        done["train"].append((run.name, reached))
        return reached >= steps

    def sample(*args):
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True)
        np.savez(out / "samples.npz", arr_0=np.zeros((2, 16, 16, 3), np.uint8), labels=np.zeros(2, np.int64))
        done["sample"].append(out.name)
        if len(done["sample"]) == 1:
            raise SystemExit(1)  # the first sampling fails: its set is not scored, nothing else is lost

    def score(self, samples, num_classes):
        done["score"].append(samples.parent.name)
        return {"fid": 10.0 + len(done["score"]), "class_consistency": 0.5, "classifier_test_accuracy": 0.9}

    monkeypatch.setattr(study, "tokens", lambda tokenizer, data, out, *_: out)
    monkeypatch.setattr(study, "train_arm", train_arm)
    monkeypatch.setattr(study, "mvq_command", sample)
    monkeypatch.setattr(study.Scorer, "__call__", score)
    monkeypatch.setattr("mvq.training.run.export", lambda run, out, **_: out)
    monkeypatch.setattr(Stackformer, "from_pretrained", lambda folder: type("M", (), {"config": type("C", (), {
        "num_classes": 10})})())
    monkeypatch.setattr(study, "figure", lambda record, path: None)
    runs, keep = tmp_path / "runs", tmp_path / "keep"
    argv = ["generation_vs_k.py", "--name", "tiny", "--runs", str(runs), "--any-k-tokenizer", str(tokenizer),
            "--stackformer-config", "unused.yaml", "--data", str(data), "--fid-reference", str(tmp_path / "stats.npz"),
            "--steps", "3", "--budgets", "4", "64", "--keep", str(keep), "--results", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="training stopped in any-k at step 2; run the same command again to "
                                         "continue it from .*runs/any-k"):
        study.main()
    with pytest.raises(SystemExit):
        study.main()
    assert done["train"] == [("any-k", 2), ("any-k", 3)]  # continued from step 2, not started again
    assert done["sample"] == ["any-k-at-k4"] and done["score"] == []  # the failed set was not scored
    shutil.rmtree(runs / "samples")
    study.main()
    assert done["sample"] == ["any-k-at-k4", "any-k-at-k4", "any-k-at-k64"] and done["score"] == done["sample"][1:]
    shutil.rmtree(runs)  # a fresh clone: only the kept scores
    monkeypatch.setattr(sys, "argv", [*argv, "--seconds", "0"])  # nothing left to do, so no deadline is met
    study.main()  # every score kept: nothing trained, sampled or measured again
    assert len(done["train"]) == 2 and len(done["score"]) == 2
    record = json.loads((tmp_path / "generation_vs_k_tiny.json").read_text())
    assert record["results"] == {"any-k": {"4": {"fid": 11.0, "class_consistency": 0.5},
                                           "64": {"fid": 12.0, "class_consistency": 0.5}}}
    assert record["classifier_test_accuracy"] == [0.9]
    assert set(json.loads((keep / "wall_seconds.json").read_text())) >= {"any-k tokenize",
                                                                         "any-k sample and score at K=64"}
