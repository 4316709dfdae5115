import json

import pytest
import torch
from safetensors.torch import load_file

from mvq.convert import config_from_original, from_original
from mvq.models.mqvae import MQVAE
from tests.conftest import reference_path


# mqvae_small (32 px, 16×16 grid) is kept in the repository; mqvae_tiny (64 px, 8×8 grid) is read from
# ../shared/reference where that exists (its 8 MB state dict is not kept here).
MQVAE_FIXTURES = ["mqvae_small", "mqvae_tiny"]


def load_reference_mqvae(name: str) -> tuple[MQVAE, dict]:
    meta = json.loads(reference_path(f"{name}.json").read_text())
    ref = meta["reference_config"]
    section = {"params": {"encoder_config": {"params": ref["encoder"]}, "decoder_config": {"params": ref["decoder"]},
                          "masker_config": {"params": ref["masker"]}, "demasker_config": {"params": ref["demasker"]},
                          "vqconfig": {"params": ref["vq"]}}}
    model = MQVAE.from_config(config_from_original(section))
    state, loss = from_original(load_file(reference_path(f"{name}_state_dict.safetensors")))
    model.load_state_dict(state, strict=True)
    return model.eval(), load_file(reference_path(f"{name}_io.safetensors"))


@pytest.mark.parametrize("name", MQVAE_FIXTURES)
def test_mqvae_matches_reference_outputs(name):
    model, io = load_reference_mqvae(name)
    with torch.no_grad():
        out = model(io["images"])
    assert torch.equal(out.positions, io["positions"])
    assert torch.equal(out.codes, io["codes"])
    torch.testing.assert_close(out.scores.flatten(1), io["scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.reconstruction, io["reconstruction"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.codebook_loss.reshape(1), io["codebook_loss"].reshape(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MQVAE_FIXTURES)
def test_tokens_decode_like_reference_reconstruction(name):
    model, io = load_reference_mqvae(name)
    images = model.detokenize(io["codes"], io["positions"])
    torch.testing.assert_close(images, io["reconstruction"], atol=1e-4, rtol=0)


def test_converter_rejects_unknown_keys_and_splits_loss():
    state = dict(load_file(reference_path("mqvae_small_state_dict.safetensors")))
    state["loss.discriminator.main.0.weight"] = torch.zeros(1)
    ours, loss = from_original(state)
    assert "discriminator.main.0.weight" in loss and not any(k.startswith("loss") for k in ours)
    assert not any("temb_proj" in k for k in ours)
    state["something.else"] = torch.zeros(1)
    try:
        from_original(state)
    except ValueError as exc:
        assert "something.else" in str(exc)
    else:
        raise AssertionError("unknown key accepted")
