import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from mvq.cli import main
from mvq.commands.reference_args import translate
from mvq.models.mqvae import MQVAE
from tests.conftest import TINY_MQVAE, reference_path

ROOT = Path(__file__).resolve().parents[1]


def test_convert_original_mqvae_checkpoint(tmp_path):
    meta = json.loads(reference_path("mqvae_tiny.json").read_text())
    ref = meta["reference_config"]
    config = {"model": {"target": "models.stage1_masked.mqvae.MaskedVectorQuantizationModel", "params": {
        "encoder_config": {"params": ref["encoder"]}, "decoder_config": {"params": ref["decoder"]},
        "masker_config": {"params": ref["masker"]}, "demasker_config": {"params": ref["demasker"]},
        "vqconfig": {"params": ref["vq"]}}}}
    (tmp_path / "ref.yml").write_text(yaml.safe_dump(config))
    torch.save({"state_dict": load_file(reference_path("mqvae_tiny_state_dict.safetensors")), "epoch": 3},
               tmp_path / "ref.ckpt")
    with pytest.raises(SystemExit) as done:
        main(["convert-original", str(tmp_path / "ref.ckpt"), "--config", str(tmp_path / "ref.yml"),
              "--out", str(tmp_path / "vae")])
    assert done.value.code == 0
    model = MQVAE.from_pretrained(tmp_path / "vae")
    io = load_file(reference_path("mqvae_tiny_io.safetensors"))
    with torch.no_grad():
        out = model(io["images"])
    assert torch.equal(out.positions, io["positions"]) and torch.equal(out.codes, io["codes"])
    torch.testing.assert_close(out.reconstruction, io["reconstruction"], atol=1e-4, rtol=0)


def test_reconstruct_writes_overlays(tmp_path):
    model = MQVAE.from_config(TINY_MQVAE)
    model.save_pretrained(tmp_path / "vae")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    (images / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit) as done:
        main(["reconstruct", "--vae", str(tmp_path / "vae"), str(images), "--out", str(tmp_path / "out"),
              "--batch-size", "2"])
    assert done.value.code == 0
    for i in range(3):
        for kind in ["reconstruction", "keep_mask", "scores"]:
            with Image.open(tmp_path / "out" / f"im{i}_{kind}.png") as im:
                assert im.size == (32, 32)
    with Image.open(tmp_path / "out" / "grid.png") as grid:
        assert grid.size[0] > 3 * 32 and grid.size[1] > 4 * 32


def test_train_py_translates_seed_commands():
    args = translate("--gpus -1 --base configs/stage1/mqvae_imagenet_f8_r25.yml --max_epochs 50".split())
    assert args == ["train", "configs/stage1/mqvae_imagenet_f8_r25.yaml", "trainer.accelerator=gpu",
                    "trainer.devices=-1", "trainer.max_epochs=50"]
    args = translate(["--base", "configs/stage1/mqvae_imagenet_f8_r30.yml", "--gpus", "0,1,",
                      "model.params.masker_config.params.topk_ratio=0.3"])
    assert "trainer.devices=[0,1]" in args and "model.keep_ratio=0.3" in args


def test_train_py_runs_as_written_up_to_the_data(tmp_path):
    # The seed's command reaches the dataset check: ImageNet's root has to be given.
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--gpus", "-1", "--base",
                             "configs/stage1/mqvae_imagenet_f8_r25.yml", "--max_epochs", "50"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "data.root" in result.stderr and "Traceback" not in result.stderr


def test_cli_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "mvq.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for name in ["train", "export", "tokenize", "reconstruct", "convert-original"]:
        assert name in result.stdout


@pytest.mark.parametrize("kind", ["class", "uncond"])
def test_convert_original_stackformer_checkpoint(tmp_path, kind):
    from mvq.models.stackformer import Stackformer

    meta = json.loads(reference_path(f"stackformer_{kind}_tiny.json").read_text())
    ref = meta["reference_config"]
    transformer = {k: ref[k] for k in ("vocab_size", "position_size", "block_size", "position_layer", "value_layer",
                                       "n_head", "n_embd", "add_absolute_position")}
    params = {"transformer_config": {"params": transformer},
              "first_stage_config": {"params": {
                  "masker_config": {"params": {"topk_ratio": ref["kept"] / ref["grid"] ** 2,
                                               "input_token_num": ref["grid"] ** 2}},
                  "vqconfig": {"params": {"codebook_size": ref["codebook_size"]}}}}}
    target = "models.stage2_masked.stackformer_uncond.ReverseStackformer"
    if kind == "class":
        params["n_classes"] = ref["n_classes"]
        target = "models.stage2_masked.stackformer_class.ClassTransformer"
    (tmp_path / "ref.yml").write_text(yaml.safe_dump({"model": {"target": target, "params": params}}))
    state = load_file(reference_path(f"stackformer_{kind}_tiny_state_dict.safetensors"))
    torch.save({"state_dict": {f"transformer.{k}": v for k, v in state.items()}}, tmp_path / "ref.ckpt")
    with pytest.raises(SystemExit) as done:
        main(["convert-original", str(tmp_path / "ref.ckpt"), "--config", str(tmp_path / "ref.yml"),
              "--out", str(tmp_path / "sf")])
    assert done.value.code == 0
    model = Stackformer.from_pretrained(tmp_path / "sf")
    io = load_file(reference_path(f"stackformer_{kind}_tiny_io.safetensors"))
    with torch.no_grad():
        out = model(io["codes"], io["positions"], io.get("labels"))
    torch.testing.assert_close(out.code_loss, io["code_loss"].reshape(()), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.position_loss, io["position_loss"].reshape(()), atol=1e-5, rtol=0)
