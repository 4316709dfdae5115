"""The ablation switches of the MQ-VAE: random mask, plain de-mask attention, constant mask update."""

import pytest
import torch

from mvq.config import ConfigError
from mvq.models.mqvae import MQVAE, MQVAEConfig
from mvq.nn import AdaptiveDemasker, RandomMasker
from tests.conftest import TINY_MQVAE


def tiny_mqvae(**switches) -> MQVAE:
    return MQVAE(MQVAEConfig.from_mapping({**TINY_MQVAE, **switches}))


def ordinary_attention(attn, x):
    """softmax(QKᵀ/√C)·V over the cells, written out with matrix products."""
    b, c, h, w = x.shape
    normed = attn.norm(x)
    q, k, v = (proj(normed).reshape(b, c, h * w) for proj in (attn.q, attn.k, attn.v))
    weights = torch.softmax(q.transpose(1, 2) @ k / c ** 0.5, dim=-1)  # B×N(queries)×N(keys)
    out = (v @ weights.transpose(1, 2)).reshape(b, c, h, w)
    return x + attn.proj_out(out)


def test_random_mask_is_random_per_image_and_per_call_with_k_fixed():
    masker = RandomMasker(channels=8, codebook_dim=4, num_tokens=5)
    h = torch.randn(1, 8, 4, 4).expand(6, -1, -1, -1)  # six identical images
    first, second = masker(h), masker(h)
    for out in (first, second):
        assert out.positions.shape == (6, 5) and out.features.shape == (6, 5, 4)
        assert out.keep_mask.sum(dim=1).tolist() == [5] * 6
        assert bool((out.positions[:, 1:] > out.positions[:, :-1]).all())  # ascending
        assert torch.equal(out.keep_mask.nonzero()[:, 1].view(6, 5), out.positions)
    assert len({tuple(p) for p in first.positions.tolist()}) > 1  # identical images, different masks
    assert not torch.equal(first.positions, second.positions)    # a new draw on every call
    masker.eval()
    assert not torch.equal(masker(h).positions, masker(h).positions)  # evaluation draws too


def test_random_mask_ignores_content_and_follows_the_seed():
    masker = RandomMasker(channels=8, codebook_dim=4, num_tokens=5)
    images = torch.randn(4, 8, 4, 4)
    torch.manual_seed(3)
    a = masker(images).positions
    torch.manual_seed(3)
    b = masker(-3 * images).positions
    assert torch.equal(a, b)
    assert not torch.equal(a, masker(images).positions)


def test_random_mask_model_has_no_score_network():
    model = tiny_mqvae(mask_choice="random")
    assert isinstance(model.masker, RandomMasker)
    assert not any("score" in name for name in model.state_dict())
    assert any("score" in name for name in tiny_mqvae().state_dict())


@pytest.mark.parametrize("switches", [dict(mask_choice="random"), dict(demask_attention="plain"),
                                      dict(mask_update="constant")])
def test_switched_models_give_shapes_and_gradients(switches, one_thread):
    model = tiny_mqvae(**switches)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(images)
    k, g = model.config.num_tokens, model.config.grid_size
    assert out.reconstruction.shape == images.shape
    assert out.codes.shape == out.positions.shape == (2, k)
    assert out.keep_mask.shape == (2, g, g) and out.keep_mask.flatten(1).sum(1).tolist() == [k, k]
    ((out.reconstruction - images).abs().mean() + out.codebook_loss).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    for name in ("encoder.conv_in.weight", "masker.project.weight", "demasker.mask_token", "decoder.conv_out.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_plain_demask_attention_is_ordinary_attention():
    torch.manual_seed(2)
    plain = AdaptiveDemasker(codebook_dim=8, out_channels=32, grid_size=4, num_layers=2, attention="plain")
    constrained = AdaptiveDemasker(codebook_dim=8, out_channels=32, grid_size=4, num_layers=2)
    constrained.load_state_dict(plain.state_dict())
    checked = []

    def check(module, args, output):
        torch.testing.assert_close(output, ordinary_attention(module, args[0]), atol=1e-5, rtol=1e-5)
        checked.append(True)

    for block in plain.blocks:
        block.attn.register_forward_hook(check)
    positions = torch.tensor([[1, 6], [0, 15]])
    keep = torch.zeros(2, 16, dtype=torch.bool).scatter_(1, positions, True)
    quantized = torch.randn(2, 2, 8)
    out = plain(quantized, positions, keep)
    assert len(checked) == 2
    assert not torch.allclose(out, constrained(quantized, positions, keep), atol=1e-4)  # the switch matters


def test_constant_mask_update_keeps_key_weights_fixed():
    demasker = AdaptiveDemasker(codebook_dim=8, out_channels=32, grid_size=4, num_layers=4, mask_init_value=0.05,
                                mask_update="constant")
    seen = []
    for block in demasker.blocks:
        block.attn.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    positions = torch.tensor([[0, 3, 9, 12]])
    keep = torch.zeros(1, 16, dtype=torch.bool).scatter_(1, positions, True)
    demasker(torch.randn(1, 4, 8), positions, keep)
    assert len(seen) == 4
    expected = torch.where(keep, 1.0, 0.05)
    for weights in seen:
        assert torch.equal(weights, expected)


def test_switch_defaults_are_the_paper_method():
    config = MQVAEConfig()
    assert (config.mask_choice, config.demask_attention, config.mask_update) == ("adaptive", "direction_constrained",
                                                                              "sqrt")


@pytest.mark.parametrize("switches, message", [
    (dict(mask_choice="randm"), "model.mask_choice must be one of adaptive, random"),
    (dict(demask_attention="vanilla"), "model.demask_attention must be one of direction_constrained, plain"),
    (dict(mask_update="linear"), "model.mask_update must be one of sqrt, constant"),
    (dict(demask_attention="plain", mask_update="constant"), "only applies to direction_constrained"),
])
def test_bad_switch_values_are_config_errors(switches, message):
    with pytest.raises(ConfigError, match=message):
        MQVAEConfig.from_mapping({**TINY_MQVAE, **switches})


def test_switches_survive_save_and_load(tmp_path):
    model = tiny_mqvae(mask_choice="random", mask_update="constant").eval()
    loaded = MQVAE.from_pretrained(model.save_pretrained(tmp_path / "random"))
    assert loaded.config == model.config and isinstance(loaded.masker, RandomMasker)
