"""Stackformer model: reference parity after conversion, config, causality, caches, pretrained I/O."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mvq.config import ConfigError
from mvq.convert.stackformer import (reference_params_from_yaml, stackformer_config_from_original,
                                     stackformer_config_section, stackformer_from_original)
from mvq.models.stackformer import Stackformer, StackformerConfig
from mvq.nn.transformer import TransformerStack

from tests.conftest import reference_path

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(codebook_size=32, grid_size=4, num_tokens=6, code_layers=2, position_layers=1, dim=32, heads=4,
            dropout=0.0)


def load_reference(name):
    meta = json.loads(reference_path(f"stackformer_{name}_tiny.json").read_text())
    state = load_file(str(reference_path(f"stackformer_{name}_tiny_state_dict.safetensors")))
    io = load_file(str(reference_path(f"stackformer_{name}_tiny_io.safetensors")))
    return meta["reference_config"], state, io


@pytest.mark.parametrize("name", ["uncond", "class"])
@pytest.mark.parametrize("prefixed", [True, False])
def test_reference_parity(name, prefixed):
    params, state, io = load_reference(name)
    if prefixed:  # as in their Lightning checkpoint, next to first-stage weights that must be ignored
        state = {**{f"transformer.{k}": v for k, v in state.items()},
                 "first_stage_model.encoder.conv_in.weight": torch.zeros(1)}
    config, ours = stackformer_from_original(state, params)
    model = Stackformer.from_config(config)
    model.load_state_dict(ours, strict=True)
    model.eval()
    with torch.no_grad():
        out = model(io["codes"], io["positions"], io.get("labels"))

    n_classes = params["n_classes"]
    assert config["num_classes"] == n_classes
    # Their vocabulary puts class tokens first; ours puts codes first.
    expected_code_logits = io["code_logits"]
    if n_classes:
        expected_code_logits = torch.cat([expected_code_logits[..., n_classes:], expected_code_logits[..., :n_classes]],
                                         dim=-1)
    torch.testing.assert_close(out.code_logits, expected_code_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.position_logits, io["position_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.code_loss, io["code_loss"].reshape(()), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.position_loss, io["position_loss"].reshape(()), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, out.code_loss + out.position_loss)


def test_converter_rejects_unknown_keys_and_missing_facts():
    params, state, _ = load_reference("uncond")
    with pytest.raises(ValueError, match="unexpected key 'value_transformer.0.attn.gate.weight'"):
        stackformer_from_original({**state, "value_transformer.0.attn.gate.weight": torch.zeros(1)}, params)
    without_k = {k: v for k, v in params.items() if k != "kept"}
    with pytest.raises(ValueError, match="num_tokens"):
        stackformer_from_original(state, without_k)
    short = dict(params, kept=20)  # their step embedding only has block_size = 17 rows
    with pytest.raises(ValueError, match="block_size"):
        stackformer_from_original(state, short)


def test_reference_yaml_params():
    """Their released stage-2 YAML (as parsed) yields the paper-size config."""
    authors_yaml = {"model": {
        "target": "models.stage2_masked.stackformer_class.ClassTransformer",
        "params": {
            "transformer_config": {"target": "modules.masked_quantization_stage2.stackedgpt.ReverseStackedPositionGPT",
                                   "params": {"vocab_size": 2024, "position_size": 1025, "block_size": 1024,
                                              "position_layer": 12, "value_layer": 12, "n_head": 16,
                                              "n_embd": 1024, "embd_pdrop": 0.1, "resid_pdrop": 0.1,
                                              "attn_pdrop": 0.1, "add_absolute_position": True}},
            "first_stage_config": {"params": {
                "masker_config": {"params": {"topk_ratio": 0.25, "input_token_num": 1024}},
                "vqconfig": {"params": {"codebook_size": 1024, "codebook_dim": 256}}}},
            "n_classes": 1000, "sos_pos_token": 1024, "loss_position_weight": 1.0}}}
    config = stackformer_config_from_original(reference_params_from_yaml(authors_yaml))
    assert config == dict(codebook_size=1024, grid_size=32, num_tokens=256, num_classes=1000, code_layers=12,
                          position_layers=12, dim=1024, heads=16, dropout=0.1, class_dropout=0.0,
                          position_loss_weight=1.0)
    uncond = json.loads(json.dumps(authors_yaml))
    uncond["model"]["target"] = "models.stage2_masked.stackformer_uncond.ReverseStackformer"
    del uncond["model"]["params"]["n_classes"]
    uncond["model"]["params"]["transformer_config"]["params"]["vocab_size"] = 1025
    config = stackformer_config_from_original(reference_params_from_yaml(uncond))
    assert (config["num_classes"], config["codebook_size"]) == (0, 1024)


def test_config_validation_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'num_layers'"):
        StackformerConfig.from_mapping({**TINY, "num_layers": 3})
    with pytest.raises(ConfigError, match="divisible"):
        StackformerConfig.from_mapping({**TINY, "heads": 5})
    with pytest.raises(ConfigError, match="exceeds"):
        StackformerConfig.from_mapping({**TINY, "num_tokens": 17})
    with pytest.raises(ConfigError, match="class_dropout"):
        StackformerConfig.from_mapping({**TINY, "class_dropout": 0.1})
    # The reference's names are accepted for the same things.
    config = StackformerConfig.from_mapping(stackformer_config_section({**TINY, "n_embd": 64, "n_head": 2,
                                                                       "n_classes": 3}))
    assert (config.dim, config.heads, config.num_classes, config.vocab_size) == (64, 2, 3, 35)
    path = tmp_path / "stage2.yaml"
    path.write_text("model:\n" + "".join(f"  {k}: {v}\n" for k, v in TINY.items()))
    model = Stackformer.from_config(path)
    assert model.config == StackformerConfig(**TINY)


def test_vocabulary_layout():
    uncond = StackformerConfig(**TINY)
    assert (uncond.vocab_size, uncond.has_null_class) == (33, False)
    guided = StackformerConfig(**TINY, num_classes=5, class_dropout=0.1)
    assert (guided.vocab_size, guided.null_class_token) == (32 + 5 + 1, 37)
    with pytest.raises(ValueError, match="class_dropout"):
        StackformerConfig(**TINY, num_classes=5).null_class_token


def test_loss_weighting_and_label_dropout():
    model = Stackformer(StackformerConfig(**TINY, num_classes=4, class_dropout=0.5, position_loss_weight=0.25))
    codes = torch.randint(0, 32, (8, 6))
    positions = torch.sort(torch.rand(8, 16).argsort(dim=1)[:, :6], dim=1).values
    labels = torch.arange(8) % 4
    model.eval()
    out = model(codes, positions, labels)
    torch.testing.assert_close(out.loss, out.code_loss + 0.25 * out.position_loss)
    assert out.code_logits.shape == (8, 6, 37) and out.position_logits.shape == (8, 6, 17)
    assert torch.equal(model.start_tokens(labels, 8, codes.device), labels + 32)
    model.train()
    torch.manual_seed(1)
    dropped = model.start_tokens(labels, 8, codes.device)
    assert set(dropped.tolist()) <= set((labels + 32).tolist()) | {36}
    assert (dropped == 36).any() and (dropped != 36).any()


def test_forward_is_causal():
    """Code logits at step t see codes/positions < t; position logits at t also see code t."""
    model = Stackformer(StackformerConfig(**TINY)).eval()
    codes = torch.randint(0, 32, (2, 6))
    positions = torch.tensor([[0, 2, 5, 7, 9, 15], [1, 3, 4, 8, 11, 12]])
    base = model(codes, positions)
    t = 3
    changed_code = codes.clone()
    changed_code[:, t] = (codes[:, t] + 1) % 32
    changed_position = positions.clone()
    changed_position[:, t] = positions[:, t] + 1
    out_code = model(changed_code, positions)
    out_position = model(codes, changed_position)
    torch.testing.assert_close(out_code.code_logits[:, :t + 1], base.code_logits[:, :t + 1])
    torch.testing.assert_close(out_code.position_logits[:, :t], base.position_logits[:, :t])
    assert not torch.allclose(out_code.position_logits[:, t], base.position_logits[:, t])
    assert not torch.allclose(out_code.code_logits[:, t + 1], base.code_logits[:, t + 1])
    torch.testing.assert_close(out_position.code_logits[:, :t + 1], base.code_logits[:, :t + 1])
    torch.testing.assert_close(out_position.position_logits[:, :t + 1], base.position_logits[:, :t + 1])
    assert not torch.allclose(out_position.code_logits[:, t + 1], base.code_logits[:, t + 1])


def test_kv_cache_matches_full_sequence_in_chunks():
    stack = TransformerStack(dim=32, heads=4, layers=2).eval()
    x = torch.randn(3, 7, 32)
    full = stack(x)
    cache = stack.new_cache(batch_size=3, max_length=7)
    parts = [stack(x[:, :3], cache), stack(x[:, 3:4], cache), stack(x[:, 4:7], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 7
    with pytest.raises(ValueError, match="KV cache holds 7"):
        stack(x[:, :1], cache)


def test_forward_input_errors():
    model = Stackformer(StackformerConfig(**TINY, num_classes=3))
    codes = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="one label per sequence"):
        model(codes, codes)
    with pytest.raises(ValueError, match="must both be"):
        model(codes, codes[:, :5], torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside 1..6"):
        long_sequence = torch.zeros(2, 7, dtype=torch.long)
        model(long_sequence, long_sequence, torch.zeros(2, dtype=torch.long))


def test_optimizer_groups_decay_linear_weights_only():
    model = Stackformer(StackformerConfig(**TINY))
    decay, no_decay = model.optimizer_groups(0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert "code_head.weight" in decayed and "code_transformer.blocks.0.attn.qkv.weight" in decayed
    assert not any(n.endswith("bias") or "norm" in n or "embedding" in n for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_pretrained_round_trip(tmp_path):
    from mvq.models.mqvae import MQVAE

    model = Stackformer(StackformerConfig(**TINY, num_classes=3, class_dropout=0.1)).eval()
    model.save_pretrained(tmp_path / "sf")
    loaded = Stackformer.from_pretrained(tmp_path / "sf")
    assert loaded.config == model.config and not loaded.training
    codes = torch.randint(0, 32, (2, 6))
    positions = torch.tensor([[0, 2, 5, 7, 9, 15], [1, 3, 4, 8, 11, 12]])
    labels = torch.tensor([0, 2])
    expected = model(codes, positions, labels).code_logits
    torch.testing.assert_close(loaded(codes, positions, labels).code_logits, expected)
    with pytest.raises(ValueError, match="'stackformer' model, not a 'mqvae'"):
        MQVAE.from_pretrained(tmp_path / "sf")


def test_load_original_stackformer_from_checkpoint_and_yaml():
    from mvq.convert.stackformer import is_original_stackformer_config, load_original_stackformer

    params, state, io = load_reference("class")
    transformer_params = {k: params[k] for k in ("vocab_size", "position_size", "block_size", "position_layer",
                                                 "value_layer", "n_head", "n_embd", "add_absolute_position")}
    authors_yaml = {"model": {"target": "models.stage2_masked.stackformer_class.ClassTransformer", "params": {
        "transformer_config": {"params": transformer_params},
        "first_stage_config": {"params": {"masker_config": {"params": {"topk_ratio": 0.25, "input_token_num": 64}},
                                          "vqconfig": {"params": {"codebook_size": 128}}}},
        "n_classes": 10, "loss_position_weight": 1.0}}}
    assert is_original_stackformer_config(authors_yaml)
    assert not is_original_stackformer_config({"model": {"params": {"encoder_config": {}}}})
    model = load_original_stackformer({"state_dict": {f"transformer.{k}": v for k, v in state.items()}}, authors_yaml)
    with torch.no_grad():
        out = model(io["codes"], io["positions"], io["labels"])
    torch.testing.assert_close(out.code_loss, io["code_loss"].reshape(()), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.position_loss, io["position_loss"].reshape(()), atol=1e-5, rtol=0)


def test_class_names_travel_from_the_data_to_the_model_and_its_folder(tmp_path):
    import json

    from mvq.config import ConfigError
    from mvq.data.token_store import TokenStore
    from mvq.models.mqvae import MQVAE
    from mvq.inference.tokenizing import tokenize_dataset
    from mvq.training.stage2_config import _model_section
    from tests.test_token_store import TINY_VAE as STORE_VAE, ImageSet

    data = ImageSet(4, num_classes=2)
    data.classes = ["shirt", "boot"]
    torch.manual_seed(0)
    vae = MQVAE.from_config(STORE_VAE)
    tokenize_dataset(vae, data, tmp_path / "tokens", batch_size=2, rank=0, world_size=1, progress=False)
    header = TokenStore(tmp_path / "tokens").header
    assert header.source["class_names"] == ["shirt", "boot"]
    config = _model_section({"code_layers": 1, "position_layers": 1, "dim": 32, "heads": 2}, vae.config, header)
    assert config.class_names == ("shirt", "boot") and config.class_label(1) == "1 (boot)"
    folder = Stackformer(config).save_pretrained(tmp_path / "sf")
    assert json.loads((folder / "config.json").read_text())["class_names"] == ["shirt", "boot"]
    assert Stackformer.from_pretrained(folder).config.class_names == ("shirt", "boot")
    with pytest.raises(ConfigError, match="3 names for 2 classes"):
        StackformerConfig(**{**TINY, "num_classes": 2, "class_names": ("a", "b", "c")})
