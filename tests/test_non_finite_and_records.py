"""Diverged weights are never trained on, exported or loaded; a Stackformer is sampled only with its own tokenizer."""

import json
import shutil

import pytest
import torch

from mvq.config import ConfigError
from mvq.errors import UserError
from mvq.models.mqvae import MQVAE
from mvq.models.pretrained import PretrainedFolderError
from mvq.training.run import export, train
from tests.test_distributed_sampling import models  # noqa: F401 (fixture)
from tests.test_sampling import TINY_VAE
from tests.train_helpers import tiny_stage1_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_diverging_run_stops_before_its_weights_change_and_names_the_last_checkpoint(tmp_path):
    config = tiny_stage1_config(tmp_path, optim={"lr": 1e30, "warmup_steps": 0},
                                trainer={"max_steps": 6, "val_check_interval": 6},
                                run={"checkpoint_every_n_steps": 1, "image_every_n_steps": 0})
    with pytest.raises(UserError, match=r"training loss became (nan|inf|-inf) at step \d+") as stopped:
        train(str(config), [], run_dir=str(tmp_path / "run"))
    message = str(stopped.value)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    if last.is_file():
        assert str(last) in message
        from mvq.training.checkpoints import model_weights, read_checkpoint

        weights = model_weights(read_checkpoint(last))
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    else:
        assert "no checkpoint was written yet" in message


@pytest.mark.parametrize("override, words", [
    ({"optim": {"lr": -1}}, "optim.lr must be a positive number"),
    ({"optim": {"lr": float("nan")}}, "optim.lr must be a positive number"),
    ({"optim": {"betas": [0.5, 1.5]}}, "optim.betas must lie in"),
    ({"trainer": {"max_steps": 0}}, "trainer.max_steps must be a whole number of at least 1"),
])
def test_bad_numbers_are_refused_before_a_run_folder_exists(tmp_path, override, words):
    config = tiny_stage1_config(tmp_path, **override)
    with pytest.raises(ConfigError, match=words):
        train(str(config), [], run_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def _poison(folder, name):
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(folder / "model.safetensors"))


def test_from_pretrained_refuses_nan_weights_naming_them(tmp_path):
    torch.manual_seed(0)
    folder = MQVAE.from_config(TINY_VAE).save_pretrained(tmp_path / "vae")
    name = next(iter(MQVAE.from_pretrained(folder).state_dict()))
    _poison(folder, name)
    with pytest.raises(PretrainedFolderError, match=rf"NaN or infinite values in 1 of \d+ tensors \({name}\)"):
        MQVAE.from_pretrained(folder)


def test_export_refuses_a_diverged_checkpoint(tmp_path):
    from mvq.training.checkpoints import read_checkpoint

    config = tiny_stage1_config(tmp_path, trainer={"max_steps": 2, "val_check_interval": 2},
                                run={"image_every_n_steps": 0})
    run = train(str(config), [], run_dir=str(tmp_path / "run"))
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(last)
    key = next(k for k in checkpoint["state_dict"] if k.startswith("model.") and "weight" in k)
    checkpoint["state_dict"][key] = torch.full_like(checkpoint["state_dict"][key], float("nan"))
    torch.save(checkpoint, last)
    with pytest.raises(UserError, match="NaN or infinite weights in 1 of"):
        export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _pipeline(sf_dir, vae_dir, **kwargs):
    from mvq.inference.pipeline import MVQPipeline

    return MVQPipeline.from_pretrained(sf_dir, vae_dir, device="cpu", **kwargs)


def test_a_stackformer_without_its_tokenizer_record_is_refused_unless_allowed(models, tmp_path):  # noqa: F811
    from mvq.models.sampling import SamplingError

    sf_dir, vae_dir = models
    bare = shutil.copytree(sf_dir, tmp_path / "bare")
    (bare / "tokenizer.json").unlink()
    with pytest.raises(SamplingError, match="has no tokenizer.json"):
        _pipeline(bare, vae_dir)
    with pytest.warns(UserWarning, match="has no tokenizer.json"):
        _pipeline(bare, vae_dir, allow_tokenizer_mismatch=True)


def test_an_edited_tokenizer_config_is_refused(models, tmp_path):  # noqa: F811
    from mvq.models.sampling import SamplingError

    sf_dir, vae_dir = models
    _pipeline(sf_dir, vae_dir)  # the pair as written
    edited = shutil.copytree(vae_dir, tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    config["norm_groups"] = 8  # same weights, other normalisation: other reconstructions
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(SamplingError, match=r"another config \(differs in: norm_groups\)"):
        _pipeline(sf_dir, edited)


def test_a_token_store_of_an_edited_tokenizer_config_is_refused(tmp_path):
    from mvq.data.token_store import check_compatible, read_header
    from mvq.models.mqvae import MQVAEConfig
    from mvq.inference.tokenizing import tokenize_dataset
    from tests.test_token_store import TINY_VAE as STORE_VAE, ImageSet

    torch.manual_seed(0)
    vae = MQVAE.from_config(STORE_VAE)
    tokenize_dataset(vae, ImageSet(2), tmp_path, batch_size=2, rank=0, world_size=1, progress=False)
    header = read_header(tmp_path)
    check_compatible(header, vae.config)
    edited = MQVAEConfig.from_mapping({**STORE_VAE, "norm_groups": 8})
    with pytest.raises(UserError, match=r"another config \(differs in: norm_groups\)"):
        check_compatible(header, edited)
