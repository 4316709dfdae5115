
import pytest
import torch
import torch.nn.functional as F

from mvq.config import ConfigError
from mvq.errors import UserError
from mvq.models.mqvae import MQVAE, MQVAEConfig
from mvq.models.vqgan import VQGAN
from mvq.nn.vqgan import Upsample
from tests.conftest import TINY_MQVAE


def tiny(**overrides) -> MQVAE:
    return MQVAE.from_config({**TINY_MQVAE, **overrides})


@pytest.mark.parametrize("ch_mult,keep_ratio,batch", [
    ([1, 2], 0.1, 1),          # f2
    ([1, 2, 2], 0.5, 3),       # f4
    ([1, 1, 2, 2], 0.25, 5),   # f8
    ([1, 1, 2, 2, 2], 1.0, 2), # f16
])
def test_shapes_and_kept_cells(ch_mult, keep_ratio, batch):
    model = tiny(ch_mult=ch_mult, keep_ratio=keep_ratio, attn_resolutions=[], resolution=32)
    c = model.config
    x = torch.rand(batch, 3, 32, 32) * 2 - 1
    out = model(x)
    g, k = c.grid_size, c.num_tokens
    assert g == 32 // 2 ** (len(ch_mult) - 1)
    assert k == int(keep_ratio * g * g)
    assert out.reconstruction.shape == x.shape
    assert out.codes.shape == out.positions.shape == (batch, k)
    assert out.keep_mask.shape == out.scores.shape == (batch, g, g)
    assert out.keep_mask.dtype == torch.bool
    assert (out.keep_mask.flatten(1).sum(1) == k).all()
    # Positions are unique, ascending and exactly the kept cells.
    assert (out.positions.diff(dim=1) > 0).all()
    assert out.keep_mask.flatten(1).gather(1, out.positions).all()
    # The kept cells are the top-K scores.
    kth = out.scores.flatten(1).topk(k, dim=1).values[:, -1:]
    assert (out.scores.flatten(1).gather(1, out.positions) >= kth).all()
    assert ((out.codes >= 0) & (out.codes < c.codebook_size)).all()
    assert out.codebook_loss.dim() == 0 and torch.isfinite(out.codebook_loss)


def test_gradients_reach_score_network_and_encoder():
    model = tiny()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    ((out.reconstruction - x).abs().mean() + out.codebook_loss).backward()
    for name in ["masker.score_net.conv1.weight", "masker.score_net.conv2.weight", "masker.score_net.norm.weight",
                 "encoder.conv_in.weight", "demasker.mask_token", "decoder.conv_out.weight", "masker.project.weight"]:
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_score_gradient_flows_only_through_kept_feature_weighting():
    model = tiny()
    model.eval()
    scores = []
    model.masker.score_net.register_forward_hook(lambda module, inputs, output: scores.append(output))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    out = model(x)
    scores[0].retain_grad()
    out.reconstruction.sum().backward()
    score_grad = scores[0].grad
    # Eval-mode score network: gradient exists and comes from the kept cells' score multiplication.
    assert model.masker.score_net.conv2.weight.grad.abs().sum() > 0
    # Only the kept cells' scores receive gradient (the ranking is detached); masked cells get exactly none.
    kept = out.keep_mask.flatten(1)
    assert (score_grad[~kept] == 0).all()
    assert (score_grad[kept] != 0).sum() > kept.sum() // 2


def test_detokenize_of_tokenize_equals_forward_in_eval():
    model = tiny().eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(x)
    codes, positions = model.tokenize(x)
    assert torch.equal(codes, out.codes) and torch.equal(positions, out.positions)
    torch.testing.assert_close(model.detokenize(codes, positions), out.reconstruction, atol=1e-5, rtol=1e-5)
    # Order of the pairs does not matter for decoding.
    perm = torch.randperm(codes.shape[1])
    torch.testing.assert_close(model.detokenize(codes[:, perm], positions[:, perm]), out.reconstruction,
                               atol=1e-5, rtol=1e-5)


def test_pretrained_round_trip_is_bit_exact(tmp_path):
    model = tiny()
    model.train()
    model(torch.rand(4, 3, 32, 32) * 2 - 1)  # move EMA buffers and batch-norm statistics
    model.save_pretrained(tmp_path / "vae")
    loaded = MQVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == model.config
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).reconstruction, loaded(x).reconstruction)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        MQVAE.from_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        MQVAE.from_pretrained(tmp_path / "empty")


def test_unknown_config_key_names_key_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        MQVAE.from_config({**TINY_MQVAE, "keep_ration": 0.3})
    message = str(err.value)
    assert "keep_ration" in message and "keep_ratio" in message and "codebook_size" in message


def test_bad_config_values():
    with pytest.raises(ConfigError, match="z_channels"):
        MQVAE.from_config({**TINY_MQVAE, "z_channels": 48})
    with pytest.raises(ConfigError, match="keep_ratio"):
        MQVAE.from_config({**TINY_MQVAE, "keep_ratio": 0.0})
    with pytest.raises(ConfigError, match="integer"):
        MQVAE.from_config({**TINY_MQVAE, "codebook_size": "many"})


@pytest.mark.parametrize("key,value", [("codebook_size", 0), ("codebook_size", -4), ("codebook_dim", 0),
                                       ("demask_layers", 0), ("ch", -1), ("num_res_blocks", 0), ("resolution", 0),
                                       ("keep_ratio", 1.5), ("keep_ratio", -0.25), ("ch_mult", []),
                                       ("ema_decay", 1.0), ("dropout", 1.0), ("mask_init_value", 0.0)])
def test_non_positive_sizes_and_out_of_range_values_are_one_line_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}") as err:
        MQVAE.from_config({**TINY_MQVAE, key: value})
    assert "\n" not in str(err.value)


# Both tokenizers share the image checks (`mvq.models.tokenizer_base`); the VQGAN with the tiny MQ-VAE's encoder.
TINY_VQGAN = {k: v for k, v in TINY_MQVAE.items() if k not in ("keep_ratio", "demask_layers")}
TOKENIZERS = {"mqvae": lambda: tiny(), "vqgan": lambda: VQGAN.from_config(TINY_VQGAN)}


@pytest.mark.parametrize("architecture", sorted(TOKENIZERS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_refused_by_tokenize_and_check_images(bad, architecture):
    model = TOKENIZERS[architecture]().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x[1, 2, 5, 7] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.tokenize(x)
    with pytest.raises(UserError, match="NaN or infinite"):  # the check for code that calls forward itself
        model.check_images(x)
    with pytest.raises(UserError, match=r"expects \[-1, 1\]"):
        model.check_images(torch.zeros(1, 3, 32, 32).index_fill(3, torch.tensor([4]), 1.5))


@pytest.mark.parametrize("architecture", sorted(TOKENIZERS))
def test_forward_checks_the_shape_only_never_the_pixel_values(architecture):
    """Reading pixel values would be a host sync in every evaluation step; forward leaves them to check_images."""
    model = TOKENIZERS[architecture]().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x[1, 2, 5, 7] = float("nan")
    with torch.no_grad():
        out = model(x)
    assert out.reconstruction.shape == x.shape
    assert torch.isfinite(out.reconstruction[0]).all()  # the other image of the batch is unaffected
    with pytest.raises(UserError, match="expected images of shape"):
        model(torch.zeros(1, 3, 16, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a GPU matter")
@pytest.mark.parametrize("architecture", sorted(TOKENIZERS))
def test_an_evaluation_step_makes_no_host_sync_on_the_gpu(architecture):
    from mvq.evaluation.tokenizer_stats import TokenizerStatistics

    model = TOKENIZERS[architecture]().cuda().eval()
    x = torch.rand(4, 3, 32, 32, device="cuda") * 2 - 1
    stats = TokenizerStatistics(model.config.codebook_size, "cuda")
    with torch.no_grad():
        model(x)  # warm-up: first calls may sync while kernels load
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = model(x)
            stats.update(out, x, out.reconstruction.clamp(-1, 1))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert stats.summary()["num_images"] == 4


def test_tokenizer_statistics_count_every_code_in_a_fixed_size_histogram():
    from types import SimpleNamespace

    from mvq.evaluation.tokenizer_stats import TokenizerStatistics

    stats = TokenizerStatistics(codebook_size=8)
    codes = torch.tensor([[0, 3, 3, 7], [3, 0, 1, 1]])
    keep = torch.tensor([[True, False], [True, True]]).expand(2, 2, 2)
    output = SimpleNamespace(codes=codes, keep_mask=keep, scores=torch.full((2, 2, 2), 0.5))
    images = torch.zeros(2, 3, 4, 4)
    stats.update(output, images, images)
    stats.update(output, images, images)
    assert stats.code_counts.tolist() == (2 * torch.bincount(codes.flatten(), minlength=8)).double().tolist()
    assert stats.code_counts.dtype == torch.float64 and stats.code_counts.shape == (8,)
    summary = stats.summary()
    assert summary["num_images"] == 4 and summary["used_codes"] == 4


def test_pixels_outside_minus_one_to_one_are_refused():
    model = tiny().eval()
    with pytest.raises(ValueError, match=r"expects \[-1, 1\]"):
        model.tokenize(torch.rand(1, 3, 32, 32) * 255)  # 8-bit values, not normalised
    edge = torch.tensor([-1.0, 1.0]).repeat(3 * 32 * 16).view(1, 3, 32, 32)
    codes, positions = model.tokenize(edge)  # the end points themselves are fine
    assert codes.shape == positions.shape == (1, model.config.num_tokens)


def test_wrong_image_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="expected images of shape"):
        tiny()(torch.zeros(1, 3, 64, 64))


def test_shipped_configs_build_and_paper_size():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "configs" / "stage1"
    for name, keep in [("mqvae_imagenet_f8_r25.yaml", 0.25), ("mqvae_imagenet_f8_r30.yaml", 0.30),
                       ("mqvae_ffhq_f8_r25.yaml", 0.25)]:
        config = MQVAEConfig.from_mapping(__import__("mvq.config").config.load_yaml(root / name)["model"])
        assert config.keep_ratio == keep and config.grid_size == 32
    model = MQVAE(MQVAEConfig())
    ours = sum(p.numel() for p in model.parameters()) + model.quantizer.codebook.numel()
    # The reference counts 9 unused time-embedding projections in the de-mask ResNet blocks
    # (256×512 + 256 each) and a padding row in the codebook; with those, its total is 36.9M.
    reference_extra = (model.config.demask_layers + 1) * (256 * 512 + 256) + model.config.codebook_dim
    assert abs(ours + reference_extra - 36.9e6) / 36.9e6 < 0.01
    assert abs(ours - 35.76e6) / 35.76e6 < 0.01


def test_reference_stage1_yaml_is_translated_by_convert(tmp_path):
    from pathlib import Path

    from mvq.config import load_yaml
    from mvq.convert.mqvae import mqvae_config_section
    text = (Path(__file__).parent / "data" / "reference_mqvae_imagenet_f8_r30.yml").read_text()
    path = tmp_path / "ref.yml"
    path.write_text(text)
    model_cfg = MQVAE.from_config(mqvae_config_section(load_yaml(path)["model"])).config
    assert model_cfg.keep_ratio == 0.30 and model_cfg.ch == 128 and model_cfg.demask_layers == 8
    assert model_cfg.num_tokens == 307
    # The model itself reads mvq's layout only, and says where the translation lives.
    with pytest.raises(ConfigError, match="mvq.convert"):
        MQVAE.from_config(path)


def test_reference_key_names_are_renamed_by_convert():
    from mvq.convert.mqvae import mqvae_config_section

    assert mqvae_config_section({**TINY_MQVAE, "topk_ratio": 0.5})["keep_ratio"] == 0.5  # the later name wins
    ours = {k: v for k, v in TINY_MQVAE.items() if k not in ("keep_ratio", "demask_layers")}
    config = MQVAEConfig.from_mapping(mqvae_config_section({**ours, "topk_ratio": 0.5, "n_layer": 3, "decay": 0.9}))
    assert (config.keep_ratio, config.demask_layers, config.ema_decay) == (0.5, 3, 0.9)
    with pytest.raises(ConfigError, match="unknown key 'topk_ratio'"):
        MQVAEConfig.from_mapping({**TINY_MQVAE, "topk_ratio": 0.5})


@pytest.mark.parametrize("size", [(1, 3, 5, 5), (2, 8, 4, 6)])
def test_upsample_equals_nearest_interpolation_then_conv(size):
    """The phase-decomposed upsampling computes the same function and gradients as the plain one."""
    torch.manual_seed(0)
    up = Upsample(size[1])
    x = torch.randn(*size, requires_grad=True)
    plain = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    fast = up(x)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(plain)
    expected = torch.autograd.grad(plain, [x, *up.parameters()], grad)
    actual = torch.autograd.grad(fast, [x, *up.parameters()], grad)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


def test_a_loaded_models_fingerprint_is_computed_once_per_file(tmp_path, monkeypatch):
    import os

    from mvq.models import pretrained

    folder = MQVAE.from_config(TINY_MQVAE).save_pretrained(tmp_path / "vae")
    first = MQVAE.from_pretrained(folder)
    expected = pretrained._hash_state(first)
    assert pretrained.weights_fingerprint(first) == expected
    hashed = []
    monkeypatch.setattr(pretrained, "_hash_state", lambda model: hashed.append(1) or expected)
    again = MQVAE.from_pretrained(folder)
    assert pretrained.weights_fingerprint(again) == expected and hashed == []  # from the cache
    with torch.no_grad():
        again.decoder.conv_out.bias.add_(1.0)  # changed in place: hashed again
    pretrained.weights_fingerprint(again)
    assert hashed == [1]
    stat = os.stat(folder / "model.safetensors")  # the file rewritten (its time changes): hashed again
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    pretrained.weights_fingerprint(MQVAE.from_pretrained(folder))
    assert hashed == [1, 1]
    assert pretrained.weights_fingerprint(MQVAE.from_config(TINY_MQVAE)) and hashed == [1, 1, 1]  # not loaded
