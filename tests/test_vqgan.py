"""The VQGAN baseline: taming-transformers parity, both quantizers, the tokenizer interface, pretrained folders."""

import json

import pytest
import torch
from safetensors.torch import load_file

import mvq
from mvq.config import ConfigError
from mvq.convert import from_taming, taming_state_dict, vqgan_config_from_taming
from mvq.models.mqvae import MQVAE
from mvq.models.pretrained import PretrainedFolderError
from mvq.models.vqgan import VQGAN, VQGANConfig
from mvq.nn import LearnedVectorQuantizer
from mvq.nn.vqgan import Decoder
from tests.conftest import reference_path

TINY_VQGAN = dict(resolution=32, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], z_channels=16,
                  codebook_size=64, codebook_dim=8)


# vqgan_taming_small (32 px, 16×16 grid) is kept in the repository; vqgan_taming_tiny (64 px, 8×8 grid) is
# read from ../shared/reference where that exists (its 8 MB state dict is not kept here).
VQGAN_FIXTURES = ["vqgan_taming_small", "vqgan_taming_tiny"]


def load_reference_vqgan(name: str = "vqgan_taming_small") -> tuple[VQGAN, dict, dict]:
    meta = json.loads(reference_path(f"{name}.json").read_text())
    model = from_taming(load_file(reference_path(f"{name}_state_dict.safetensors")), meta["reference_config"])
    return model, load_file(reference_path(f"{name}_io.safetensors")), meta


@pytest.mark.parametrize("name", VQGAN_FIXTURES)
def test_vqgan_matches_taming_outputs(one_thread, name):
    model, io, _ = load_reference_vqgan(name)
    with torch.no_grad():
        out = model(io["images"])
    n = model.config.num_cells
    assert out.codes.shape == (3, n)
    assert torch.equal(out.codes, io["codes"])
    torch.testing.assert_close(out.reconstruction, io["reconstruction"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.codebook_loss.reshape(1), io["codebook_loss"].reshape(1), atol=1e-5, rtol=0)
    codes, positions = model.tokenize(io["images"])
    assert torch.equal(codes, io["codes"]) and torch.equal(positions[1], torch.arange(n))
    torch.testing.assert_close(model.detokenize(io["codes"]), io["reconstruction"], atol=1e-4, rtol=0)


def test_taming_config_and_state_dict_translation():
    _, _, meta = load_reference_vqgan()
    config = vqgan_config_from_taming({"model": {"target": "taming.models.vqgan.VQModel",
                                                 "params": meta["reference_config"]}})
    assert config["quantizer"] == "learned" and config["codebook_dim"] == 24 and config["codebook_size"] == 64
    state = dict(load_file(reference_path("vqgan_taming_small_state_dict.safetensors")))
    state["loss.discriminator.main.0.weight"] = torch.zeros(1)
    ours, loss = taming_state_dict(state)
    assert list(loss) == ["discriminator.main.0.weight"] and "quantizer.embedding.weight" in ours
    state["quantize.embed_avg"] = torch.zeros(1)
    with pytest.raises(ValueError, match="quantize.embed_avg"):
        taming_state_dict(state)


@pytest.mark.parametrize("change, message", [
    (dict(double_z=True), "double_z"),
    (dict(out_ch=1), "out_ch"),
    (dict(attn_type="linear"), "attn_type"),
    (dict(use_checkpoint=True), "not supported"),
])
def test_unsupported_taming_configs_are_config_errors(change, message):
    _, _, meta = load_reference_vqgan()
    config = json.loads(json.dumps(meta["reference_config"]))
    config["ddconfig"].update(change)
    with pytest.raises(ConfigError, match=message):
        vqgan_config_from_taming(config)
    with pytest.raises(ConfigError, match="n_embed"):
        vqgan_config_from_taming({"ddconfig": meta["reference_config"]["ddconfig"], "embed_dim": 4})


@pytest.mark.parametrize("quantizer", ["ema", "learned"])
def test_vqgan_shapes_and_gradients(quantizer, one_thread):
    model = VQGAN(VQGANConfig.from_mapping({**TINY_VQGAN, "quantizer": quantizer})).train()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    codebook_before = model.quantizer.codebook.detach().clone()
    out = model(images)
    assert out.reconstruction.shape == images.shape
    assert out.codes.shape == out.positions.shape == (2, 64) and out.keep_mask.shape == (2, 8, 8)
    assert bool(out.keep_mask.all()) and torch.equal(out.positions[0], torch.arange(64))
    ((out.reconstruction - images).abs().mean() + out.codebook_loss).backward()
    for name in ("encoder.conv_in.weight", "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_in.weight",
                 "decoder.mid.attn_1.q.weight", "decoder.conv_out.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    if quantizer == "learned":  # trained by gradient
        assert model.quantizer.embedding.weight.grad.abs().sum() > 0
    else:  # trained by EMA in the forward pass, no gradient
        assert not any(p.requires_grad for p in model.quantizer.parameters())
        assert not torch.equal(model.quantizer.codebook, codebook_before)


def test_learned_quantizer_loss_and_gradients_are_vqgans():
    quantizer = LearnedVectorQuantizer(codebook_size=16, dim=4, commitment_beta=0.25)
    z = torch.randn(3, 5, 4, requires_grad=True)
    quantized, loss, codes = quantizer(z)
    q = quantizer.embedding.weight[codes].detach()
    expected = ((q - z.detach()) ** 2).mean() * 1.25
    torch.testing.assert_close(loss, expected)
    assert torch.equal(codes, ((z.detach()[..., None, :] - quantizer.embedding.weight.detach()) ** 2)
                       .sum(-1).argmin(-1))
    torch.testing.assert_close(quantized, q)  # forward value: the codebook vectors
    loss.backward()
    # Commitment term (weight 1) to z, codebook term (weight β) to the codebook.
    torch.testing.assert_close(z.grad, 2 * (z.detach() - q) / z.numel())
    codebook_grad = torch.zeros(16, 4).index_add_(0, codes.flatten(), 0.25 * 2 * (q - z.detach()).reshape(-1, 4)
                                                  / z.numel())
    torch.testing.assert_close(quantizer.embedding.weight.grad, codebook_grad)


def test_detokenize_places_codes_at_their_positions():
    model = VQGAN(VQGANConfig.from_mapping(TINY_VQGAN)).eval()
    codes = torch.randint(0, 64, (2, 64))
    order = torch.stack([torch.randperm(64) for _ in range(2)])
    raster = model.detokenize(codes)
    torch.testing.assert_close(model.detokenize(codes.gather(1, order), order), raster)
    with pytest.raises(ValueError, match="each of 0..63 once"):
        model.detokenize(codes, torch.zeros_like(codes))
    with pytest.raises(ValueError, match="B×64"):
        model.detokenize(codes[:, :16])


def test_vqgan_pretrained_folder_round_trip(tmp_path):
    model = VQGAN(VQGANConfig.from_mapping({**TINY_VQGAN, "quantizer": "learned"})).eval()
    folder = model.save_pretrained(tmp_path / "vqgan")
    loaded = mvq.VQGAN.from_pretrained(folder)
    assert isinstance(loaded.config, mvq.VQGANConfig) and loaded.config == model.config
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded.tokenize(images)[0], model.tokenize(images)[0])
    with pytest.raises(PretrainedFolderError, match="'vqgan'"):
        MQVAE.from_pretrained(folder)


def test_bad_vqgan_config_values_are_config_errors():
    with pytest.raises(ConfigError, match="model.quantizer must be one of ema, learned"):
        VQGANConfig.from_mapping({**TINY_VQGAN, "quantizer": "gumbel"})
    with pytest.raises(ConfigError, match="ddconfig"):
        VQGANConfig.from_mapping({"ddconfig": {}})


def test_mqvae_decoder_has_no_input_block():
    """The MQ-VAE's decoder keeps its layout: conv_in and the middle block only come with z_channels."""
    args = dict(out_channels=3, ch=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], resolution=16)
    plain, with_input = Decoder(**args).state_dict(), Decoder(**args, z_channels=8).state_dict()
    assert not any(k.startswith(("conv_in", "mid.")) for k in plain)
    assert set(with_input) - set(plain) == {k for k in with_input if k.startswith(("conv_in", "mid."))}
    assert with_input["conv_in.weight"].shape == (32, 8, 3, 3)


def test_vqgan_selected_by_architecture_key():
    from mvq.models.tokenizer import tokenizer_config

    assert isinstance(tokenizer_config({**TINY_VQGAN, "architecture": "vqgan"}), VQGANConfig)
    assert tokenizer_config({"keep_ratio": 0.3}).keep_ratio == 0.3  # no architecture: an MQ-VAE
    with pytest.raises(ConfigError, match="model.architecture must be one of mqvae, vqgan"):
        tokenizer_config({"architecture": "vqvae"})
    with pytest.raises(ConfigError, match="unknown key 'keep_ratio'"):
        tokenizer_config({**TINY_VQGAN, "architecture": "vqgan", "keep_ratio": 0.25})


def test_mqvae_starts_its_encoder_from_a_vqgan():
    from mvq.models.mqvae import MQVAEConfig
    from mvq.models.tokenizer import initialize_from
    from tests.conftest import TINY_MQVAE

    vqgan = VQGAN(VQGANConfig.from_mapping({**TINY_VQGAN, "z_channels": 64}))
    mqvae = MQVAE(MQVAEConfig.from_mapping(TINY_MQVAE))
    decoder_before = {k: v.clone() for k, v in mqvae.decoder.state_dict().items()}
    assert initialize_from(mqvae, vqgan, "vqgan-folder") == "encoder"
    for key, value in vqgan.encoder.state_dict().items():
        assert torch.equal(mqvae.encoder.state_dict()[key], value), key
    for key, value in mqvae.decoder.state_dict().items():
        assert torch.equal(value, decoder_before[key]), key
    with pytest.raises(ConfigError, match=r"z_channels \(64 vs 16\)"):
        initialize_from(mqvae, VQGAN(VQGANConfig.from_mapping(TINY_VQGAN)), "other")
    with pytest.raises(ConfigError, match="cannot start a vqgan"):
        initialize_from(vqgan, mqvae, "mqvae-folder")


@pytest.mark.slow
def test_vqgan_trains_exports_and_starts_an_mqvae(tmp_path):
    import yaml

    from mvq.models.tokenizer import load_tokenizer
    from mvq.training.config import load_training_config
    from mvq.training.run import export, train
    from mvq.training.stage1 import TokenizerTraining
    from tests.train_helpers import tiny_stage1_config

    config_path = tiny_stage1_config(tmp_path, trainer={"max_steps": 3, "val_check_interval": 3})
    config = yaml.safe_load(config_path.read_text())
    config["model"] = {**TINY_VQGAN, "architecture": "vqgan", "z_channels": 64}
    config_path.write_text(yaml.safe_dump(config))
    run_dir = train(str(config_path), [], run_dir=str(tmp_path / "run"))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    vqgan = load_tokenizer(export(run_dir, tmp_path / "vqgan"))
    assert isinstance(vqgan, VQGAN) and ckpt["global_step"] == 3
    for key, value in vqgan.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"]["model." + key]), key
    # An MQ-VAE run with run.init_from=<the VQGAN folder> starts from the VQGAN's encoder.
    (tmp_path / "mqvae").mkdir()
    mqvae_path = tiny_stage1_config(tmp_path / "mqvae", run={"init_from": str(tmp_path / "vqgan")})
    _, mqvae_config = load_training_config(mqvae_path, [])
    module = TokenizerTraining(mqvae_config)
    for key, value in vqgan.encoder.state_dict().items():
        assert torch.equal(module.model.encoder.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["vqgan_photos_64.yaml", "vqgan_fashion_mnist_32.yaml"])
def test_shipped_vqgan_configs_are_valid(name):
    from pathlib import Path

    from mvq.config import load_yaml
    from mvq.models.tokenizer import tokenizer_config

    config = tokenizer_config(load_yaml(Path(__file__).parents[1] / "configs" / "stage1" / name)["model"])
    assert isinstance(config, VQGANConfig) and config.quantizer == "ema"
    assert config.num_tokens == {"vqgan_photos_64.yaml": 64, "vqgan_fashion_mnist_32.yaml": 16}[name]


def plain_gpt(**changes):
    from mvq.models.stackformer import Stackformer, StackformerConfig

    config = dict(codebook_size=32, grid_size=4, num_tokens=16, code_layers=2, position_layers=0, dim=32, heads=4,
                  dropout=0.0)
    return Stackformer(StackformerConfig.from_mapping({**config, **changes}))


def test_stackformer_without_position_transformer_is_a_plain_gpt():
    model = plain_gpt()
    assert model.position_transformer is None
    assert not any(k.startswith(("position_transformer", "position_head", "position_norm")) for k in model.state_dict())
    codes = torch.randint(0, 32, (3, 16))
    positions = torch.arange(16).expand(3, -1)
    out = model(codes, positions)
    assert out.position_logits is None and float(out.position_loss) == 0.0
    expected = torch.nn.functional.cross_entropy(out.code_logits.flatten(0, 1), codes.flatten())
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.code_head.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="position_layers: 0 .* needs a token at every cell"):
        plain_gpt(num_tokens=8)
    with pytest.raises(ConfigError, match="position_layers must be 0 or more"):
        plain_gpt(position_layers=-1)


def test_plain_gpt_generates_raster_positions():
    from mvq.models.sampling import SamplingError

    model = plain_gpt(num_classes=3, class_dropout=0.1).eval()
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    codes, positions = model.generate(4, labels=[0, 1, 2, 0], generator=generators, cfg_scale=1.5)
    assert torch.equal(positions, torch.arange(16).expand(4, -1))
    assert codes.shape == (4, 16) and int(codes.max()) < 32
    again, _ = model.generate(4, labels=[0, 1, 2, 0], generator=[torch.Generator().manual_seed(i) for i in range(4)],
                              cfg_scale=1.5, use_cache=False)
    assert torch.equal(codes, again)  # the cache changes nothing
    completed, completed_positions = model.generate(2, labels=1, prefix_codes=codes[0, :5],
                                                    prefix_positions=torch.arange(5))
    assert torch.equal(completed[:, :5], codes[0, :5].expand(2, -1))
    assert torch.equal(completed_positions, torch.arange(16).expand(2, -1))
    with pytest.raises(SamplingError, match="prefix positions must be 0..2"):
        model.generate(1, labels=0, prefix_codes=codes[0, :3], prefix_positions=torch.tensor([0, 2, 3]))
    with pytest.raises(ValueError, match="no Position-Transformer"):
        decoder = model.incremental_decoder(torch.tensor([32]))
        decoder.code_logits()
        decoder.position_logits(torch.tensor([0]))
