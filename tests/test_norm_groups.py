"""`model.norm_groups`: the GroupNorm group count of the encoder and decoder (VQGAN's 32 by default).

At narrow widths 32 groups put one channel in each group, which is instance normalisation: it
removes every image's mean colour at that layer. Small configs choose fewer groups.
"""

import json

import pytest
import torch
from torch import nn

from mvq.config import ConfigError
from mvq.models.mqvae import MQVAE, MQVAEConfig
from mvq.models.tokenizer import load_tokenizer
from mvq.models.vqgan import VQGAN, VQGANConfig
from mvq.nn.vqgan import group_norm
from tests.conftest import TINY_MQVAE

TINY_VQGAN = dict(resolution=32, ch=16, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], z_channels=32,
                  codebook_size=32, codebook_dim=8)


def group_counts(model: nn.Module) -> dict[int, set[int]]:
    """Channels → the group counts of every GroupNorm over that many channels."""
    counts: dict[int, set[int]] = {}
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            counts.setdefault(module.num_channels, set()).add(module.num_groups)
    return counts


def test_default_is_32_groups_as_in_the_vqgan():
    model = MQVAE(MQVAEConfig.from_mapping(TINY_MQVAE))  # ch 32 and 64
    assert group_counts(model) == {32: {32}, 64: {32}}


@pytest.mark.parametrize("build", [lambda g: MQVAE(MQVAEConfig.from_mapping({**TINY_MQVAE, "norm_groups": g})),
                                   lambda g: VQGAN(VQGANConfig.from_mapping({**TINY_VQGAN, "norm_groups": g}))])
def test_every_group_norm_of_encoder_and_decoder_uses_norm_groups(build):
    counts = group_counts(build(8))
    assert counts and all(groups == {8} for groups in counts.values())


def test_channels_not_a_multiple_take_the_greatest_common_divisor():
    assert group_norm(48, 32).num_groups == 16
    assert group_norm(16, 32).num_groups == 16  # one channel per group: instance normalisation
    assert group_norm(16, 4).num_groups == 4


def test_one_channel_per_group_removes_each_channels_mean_and_fewer_groups_keep_it():
    """The mechanism behind the setting: a per-image colour shift vanishes through instance-style norm."""
    torch.manual_seed(0)
    h = torch.randn(2, 16, 8, 8)
    shifted = h + torch.randn(2, 16, 1, 1)  # a different constant per image and channel
    per_channel, grouped = group_norm(16, 32), group_norm(16, 4)
    assert torch.allclose(per_channel(h), per_channel(shifted), atol=1e-4)
    assert not torch.allclose(grouped(h), grouped(shifted), atol=1e-2)


@pytest.mark.parametrize("bad", [0, -4])
def test_norm_groups_must_be_positive(bad):
    with pytest.raises(ConfigError, match="model.norm_groups must be at least 1"):
        MQVAEConfig.from_mapping({**TINY_MQVAE, "norm_groups": bad})


def test_saved_folders_keep_norm_groups_and_older_folders_load_with_32(tmp_path):
    model = VQGAN(VQGANConfig.from_mapping({**TINY_VQGAN, "norm_groups": 4})).eval()
    model.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["norm_groups"] == 4
    assert group_counts(load_tokenizer(tmp_path / "new")) == group_counts(model)

    old = MQVAE(MQVAEConfig.from_mapping(TINY_MQVAE)).eval()
    old.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    raw = json.loads(config_file.read_text())
    del raw["norm_groups"]  # a folder written before the key existed
    config_file.write_text(json.dumps(raw))
    loaded = load_tokenizer(tmp_path / "old").eval()
    assert loaded.config.norm_groups == 32
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.manual_seed(1)
    expected = old(images).reconstruction
    torch.manual_seed(1)
    assert torch.equal(loaded(images).reconstruction, expected)
