"""A trained VQGAN in every command: tokenize, eval recon, reconstruct, stage-2 training, sampling, convert-original."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mvq.cli import main as cli_main
from mvq.config import ConfigError
from mvq.data.token_store import TokenStore, check_compatible
from mvq.models.pretrained import weights_fingerprint
from mvq.models.tokenizer import load_tokenizer
from mvq.models.vqgan import VQGAN, VQGANConfig
from tests.conftest import reference_path

# f4 over 16 px: a 4×4 grid, 16 tokens per image.
TINY_VQGAN = dict(resolution=16, ch=16, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], z_channels=16,
                  codebook_size=32, codebook_dim=8)


def main(argv: list[str]) -> None:
    """Run `mvq ARGV` and require success."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 0


@pytest.fixture(scope="module")
def vqgan_assets(tmp_path_factory):
    """A random tiny VQGAN folder, a synthetic-data config and the store `mvq tokenize` writes from them."""
    root = tmp_path_factory.mktemp("vqgan_commands")
    torch.manual_seed(0)
    VQGAN(VQGANConfig.from_mapping(TINY_VQGAN)).save_pretrained(root / "vae")
    data = {"data": {"dataset": "synthetic", "resolution": 16, "num_train": 24, "num_val": 6, "batch_size": 4,
                     "num_workers": 0}}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    main(["tokenize", "--vae", str(root / "vae"), "--data", str(root / "data.yaml"), "--out", str(root / "tokens"),
          "--num-workers", "0", "--batch-size", "8", "--device", "cpu"])
    return root


def test_tokenize_writes_every_cell_in_raster_order(vqgan_assets):
    vae = load_tokenizer(vqgan_assets / "vae")
    store = TokenStore(vqgan_assets / "tokens")
    assert store.header.num_tokens == store.header.num_cells == 16 and len(store) == 24
    assert store.header.vae["weights_sha256"] == weights_fingerprint(vae)
    check_compatible(store.header, vae.config, weights_sha256=weights_fingerprint(vae))
    from mvq.data.build import dataset_from_path

    images = torch.stack([dataset_from_path(vqgan_assets / "data.yaml", "train", 16)[i]["image"] for i in range(3)])
    codes, _ = vae.tokenize(images)
    for i in range(3):
        assert torch.equal(store[i]["positions"], torch.arange(16))
        assert torch.equal(store[i]["codes"], codes[i])
    other = VQGAN(VQGANConfig.from_mapping(TINY_VQGAN))
    with pytest.raises(ValueError, match="other weights"):
        check_compatible(store.header, other.config, weights_sha256=weights_fingerprint(other))


def test_eval_recon_and_reconstruct_take_a_vqgan(vqgan_assets, tmp_path):
    out = tmp_path / "recon.json"
    main(["eval", "recon", "--vae", str(vqgan_assets / "vae"), "--data", str(vqgan_assets / "data.yaml"),
          "--no-fid", "--no-lpips", "--num-workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["num_images"] == 6 and 0 < metrics["codebook_usage_percent"] <= 100 and np.isfinite(metrics["psnr"])
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / "a.png")
    main(["reconstruct", str(images), "--vae", str(vqgan_assets / "vae"), "--out", str(tmp_path / "out"),
          "--device", "cpu"])
    assert (tmp_path / "out" / "a_reconstruction.png").is_file() and (tmp_path / "out" / "grid.png").is_file()


def stage2_config(root: Path, assets: Path, **model) -> Path:
    config = {
        "stage": 2, "vae": str(assets / "vae"),
        "model": {"code_layers": 1, "position_layers": 0, "dim": 16, "heads": 2, "dropout": 0.0, **model},
        "data": {"tokens": str(assets / "tokens"), "val_fraction": 0.25, "batch_size": 6, "num_workers": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "trainer": {"max_steps": 2, "val_check_interval": 2, "check_val_every_n_epoch": None,
                    "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_model_summary": False},
        "run": {"image_every_n_steps": 2, "num_log_images": 2, "checkpoint_every_n_steps": 2},
    }
    path = root / "stage2.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_stage2_config_reads_a_vqgan_folder(vqgan_assets, tmp_path):
    from mvq.training.stage2_config import parse_stage2, read_vae_config

    assert isinstance(read_vae_config(vqgan_assets / "vae"), VQGANConfig)
    config = parse_stage2(yaml.safe_load(stage2_config(tmp_path, vqgan_assets).read_text()))
    assert (config.model.num_tokens, config.model.grid_size, config.model.position_layers) == (16, 4, 0)


@pytest.mark.slow
def test_plain_gpt_trains_on_vqgan_tokens_and_the_pipeline_decodes_its_samples(vqgan_assets, tmp_path):
    from mvq.inference.pipeline import MVQPipeline
    from mvq.training.run import export, train

    run_dir = train(str(stage2_config(tmp_path, vqgan_assets)), [], run_dir=str(tmp_path / "run"))
    folder = export(run_dir, tmp_path / "gpt")
    assert list((run_dir / "images").glob("*.png"))  # sample grids were decoded by the VQGAN
    pipe = MVQPipeline.from_pretrained(folder, vqgan_assets / "vae", device="cpu")
    assert isinstance(pipe.vae, VQGAN)
    images = pipe(labels=[0, 1, 2], seed=0)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert np.array_equal(images, pipe(labels=[0, 1, 2], seed=0))
    other = tmp_path / "other_vae"
    VQGAN(VQGANConfig.from_mapping(TINY_VQGAN)).save_pretrained(other)
    with pytest.raises(Exception, match="different"):
        MVQPipeline.from_pretrained(folder, other, device="cpu")


def taming_checkpoint(tmp_path: Path, with_discriminator: bool = True) -> tuple[Path, Path]:
    """A taming-transformers VQGAN Lightning checkpoint (the reference fixture's weights) and its YAML."""
    from mvq.losses.discriminator import PatchDiscriminator

    meta = json.loads(reference_path("vqgan_taming_small.json").read_text())
    state = dict(load_file(reference_path("vqgan_taming_small_state_dict.safetensors")))
    if with_discriminator:
        # taming's NLayerDiscriminator: main.0 stem conv, (conv, BatchNorm, LeakyReLU) per layer, head conv.
        disc = PatchDiscriminator().state_dict()
        n = max(int(k.split(".")[1]) for k in disc if k.startswith("blocks.")) + 1
        for key, value in disc.items():
            part, rest = key.split(".", 1)
            if part == "stem":
                index = 0
            elif part == "head":
                index = 2 + 3 * n
            else:
                block, kind, rest = rest.split(".", 2)
                index = 2 + 3 * int(block) + (kind == "norm")
            state[f"loss.discriminator.main.{index}.{rest}"] = value
        state["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "last.ckpt")
    config = {"model": {"target": "taming.models.vqgan.VQModel",
                        "params": {**meta["reference_config"], "lossconfig": {
                            "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                            "params": {"disc_start": 10000, "disc_weight": 0.8, "codebook_weight": 1.0}}}}}
    (tmp_path / "vqgan.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "last.ckpt", tmp_path / "vqgan.yaml"


def test_convert_original_converts_a_taming_vqgan_checkpoint(tmp_path):
    ckpt, config = taming_checkpoint(tmp_path)
    main(["convert-original", str(ckpt), "--config", str(config), "--out", str(tmp_path / "out")])
    model = load_tokenizer(tmp_path / "out").eval()
    io = load_file(reference_path("vqgan_taming_small_io.safetensors"))
    assert isinstance(model, VQGAN) and model.config.quantizer == "learned"
    with torch.no_grad():
        out = model(io["images"])
    assert torch.equal(out.codes, io["codes"])
    torch.testing.assert_close(out.reconstruction, io["reconstruction"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.codebook_loss.reshape(1), io["codebook_loss"].reshape(1), atol=1e-5, rtol=0)
    disc = load_file(tmp_path / "out" / "discriminator.safetensors")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(disc["stem.weight"], state["loss.discriminator.main.0.weight"])


def test_convert_original_tells_a_taming_checkpoint_by_its_keys(tmp_path):
    ckpt, _ = taming_checkpoint(tmp_path, with_discriminator=False)
    meta = json.loads(reference_path("vqgan_taming_small.json").read_text())
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump({"model": {"params": meta["reference_config"]}}))
    main(["convert-original", str(ckpt), "--config", str(tmp_path / "bare.yaml"), "--out", str(tmp_path / "out")])
    assert isinstance(load_tokenizer(tmp_path / "out"), VQGAN)
    assert not (tmp_path / "out" / "discriminator.safetensors").exists()
    # An MQ-VAE config with a taming checkpoint (or the reverse) is one clear error, not a traceback.
    mqvae_yaml = {"model": {"target": "models.stage1_masked.mqvae.MaskedVectorQuantizationModel",
                            "params": {"encoder_config": {"params": {}}}}}
    (tmp_path / "mqvae.yaml").write_text(yaml.safe_dump(mqvae_yaml))
    with pytest.raises(ConfigError, match="taming-transformers VQGAN"):
        from mvq.convert.checkpoint import convert_checkpoint

        convert_checkpoint(ckpt, tmp_path / "mqvae.yaml", tmp_path / "out2")
