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


@pytest.mark.parametrize("bad", [{"train_keep_min": 0.5}, {"train_keep_min": 0.001}, {"train_keep_min": 0.1,
                                                                                      "train_keep_schedule": "x"}])
def test_any_k_settings_are_validated(bad):
    from mvq.config import ConfigError

    with pytest.raises(ConfigError, match="train_keep"):
        MQVAEConfig.from_mapping({**TINY_VAE, **bad})


@pytest.mark.slow
def test_an_any_k_run_trains_at_drawn_budgets(tmp_path):
    from mvq.demo.report import read_scalars
    from mvq.training.run import train
    from tests.train_helpers import tiny_stage1_config

    config = tiny_stage1_config(tmp_path, model={"train_keep_min": 0.125, "train_full_keep_pass": True},
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
