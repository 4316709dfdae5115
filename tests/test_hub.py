"""Pretrained models by name: zoo names and Hugging Face Hub ids (offline, from a populated cache)."""

import shutil

import pytest
import torch

from mvq.errors import MissingInputError
from mvq.models.mqvae import MQVAE
from tests.test_sampling import TINY_VAE, tiny_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def saved_vae(tmp_path):
    torch.manual_seed(0)
    model = MQVAE.from_config(TINY_VAE)
    return model, model.save_pretrained(tmp_path / "saved")


def _hub_cache(cache, repo_id, folder):
    """Lay `folder`'s files out as huggingface_hub's cache holds a downloaded repository at COMMIT."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, repo / "snapshots" / COMMIT)


def test_a_hub_id_loads_offline_from_the_cache(saved_vae, tmp_path, monkeypatch):
    from huggingface_hub import constants

    model, folder = saved_vae
    # As HF_HUB_CACHE=… HF_HUB_OFFLINE=1 set before the process starts (huggingface_hub reads them on import).
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _hub_cache(tmp_path / "hub", "someone/tiny-mqvae", folder)
    loaded = MQVAE.from_pretrained("someone/tiny-mqvae")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert MQVAE.from_pretrained("someone/tiny-mqvae", local_files_only=True).config == model.config
    with pytest.raises(MissingInputError, match=r"someone/missing is not in the Hugging Face Hub cache") as missing:
        MQVAE.from_pretrained("someone/missing")
    assert "\n" not in str(missing.value)


def test_a_zoo_name_loads_from_the_zoo_folders(saved_vae, tmp_path, monkeypatch):
    model, folder = saved_vae
    zoo = tmp_path / "zoo"
    shutil.copytree(folder, zoo / "tiny")
    monkeypatch.setenv("MVQ_ZOO", str(zoo))
    assert MQVAE.from_pretrained("tiny").config == model.config
    with pytest.raises(MissingInputError, match=r"not-there is not a folder, a zoo model \(zoo models: tiny"):
        MQVAE.from_pretrained("not-there")


def test_commands_and_the_pipeline_take_names(tmp_path, monkeypatch):
    from mvq.inference.pipeline import MVQPipeline

    torch.manual_seed(0)
    vae = MQVAE.from_config(TINY_VAE)
    sf = tiny_model(num_classes=3, grid_size=vae.config.grid_size, num_tokens=vae.config.num_tokens,
                    codebook_size=vae.config.codebook_size)
    zoo = tmp_path / "zoo"
    vae.save_pretrained(zoo / "tiny-vae")
    sf.save_pretrained(zoo / "tiny-sf", tokenizer=vae)
    monkeypatch.setenv("MVQ_ZOO", str(zoo))
    pipe = MVQPipeline.from_pretrained("tiny-sf", "tiny-vae", device="cpu")
    from mvq.training.config import _with_absolute_paths

    (tmp_path / "store").mkdir()
    monkeypatch.chdir(tmp_path)  # a stage-2 config names its tokenizer by zoo name; an existing path goes absolute
    paths = _with_absolute_paths({"stage": 2, "vae": "tiny-vae", "data": {"tokens": "store"}})
    assert paths["vae"] == "tiny-vae" and paths["data"]["tokens"] == str(tmp_path / "store")
    from tests.test_sampling import run_sample_command

    run_sample_command(["--stackformer", "tiny-sf", "--vae", "tiny-vae", "--n", "2", "--labels", "1", "--device", "cpu",
                        "--no-png", "--out", str(tmp_path / "out")])
    import numpy as np

    assert np.array_equal(np.load(tmp_path / "out" / "samples.npz")["arr_0"], pipe(labels=[1, 1], seed=0))


def test_push_to_hub_uploads_the_saved_folder(saved_vae, monkeypatch):
    from mvq.models import hub

    model, _ = saved_vae
    uploaded = {}

    def fake_push(folder, repo_id, private=False, message=None):
        uploaded["files"] = sorted(p.name for p in __import__("pathlib").Path(folder).iterdir())
        uploaded["repo"] = repo_id
        return "commit"

    monkeypatch.setattr(hub, "push_folder", fake_push)
    assert model.push_to_hub("someone/tiny") == "commit"
    assert uploaded == {"files": ["config.json", "model.safetensors"], "repo": "someone/tiny"}
