"""Stackformer sampling (KV caches, constraints, guidance, batching) and `mvq sample` end to end."""

import numpy as np
import pytest
import torch

from mvq.models.sampling import filter_probabilities, sample_from_logits
from mvq.models.stackformer import Stackformer, StackformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(codebook_size=32, grid_size=4, num_tokens=6, code_layers=2, position_layers=2, dim=32, heads=4,
            dropout=0.0)


def tiny_model(**overrides) -> Stackformer:
    model = Stackformer(StackformerConfig(**{**TINY, **overrides}))
    with torch.no_grad():  # larger weights than the init so that sampled tokens depend visibly on the inputs
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- filtering and drawing

def test_top_k_and_top_p_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    p = logits.softmax(-1)[0]  # ≈ 0.644, 0.237, 0.087, 0.032
    assert (filter_probabilities(logits, top_k=2, top_p=None)[0] > 0).tolist() == [True, True, False, False]
    # The nucleus is the smallest prefix whose mass reaches top_p.
    assert (filter_probabilities(logits, None, float(p[0]) + 0.01)[0] > 0).tolist() == [True, True, False, False]
    assert (filter_probabilities(logits, None, float(p[0]) - 0.01)[0] > 0).tolist() == [True, False, False, False]
    assert (filter_probabilities(logits, None, 1.0)[0] > 0).all()


def test_inverse_cdf_sampling_follows_the_distribution():
    logits = torch.tensor([0.0, float("-inf"), 1.0, 2.0, float("-inf")]).expand(20000, 5)
    uniforms = (torch.arange(20000) + 0.5) / 20000
    picks = sample_from_logits(logits, None, None, uniforms)
    freq = torch.bincount(picks, minlength=5).float() / 20000
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=1e-3, rtol=0)
    # The largest uniform never lands on a forbidden trailing entry.
    assert sample_from_logits(logits[:1], None, None, torch.tensor([1 - 1e-9])).item() == 3


# ----------------------------------------------------------------------------- caches

@pytest.mark.parametrize("num_classes", [0, 3])
@pytest.mark.parametrize("raster", [True, False])
def test_cached_and_uncached_generation_agree(num_classes, raster):
    model = tiny_model(num_classes=num_classes).double()
    labels = [0, 2, 1, 2] if num_classes else None
    cached = model.generate(4, labels=labels, raster_constraint=raster, generator=seeded(3), top_k=None, top_p=None)
    uncached = model.generate(4, labels=labels, raster_constraint=raster, generator=seeded(3), top_k=None,
                              top_p=None, use_cache=False)
    assert torch.equal(cached[0], uncached[0]) and torch.equal(cached[1], uncached[1])
    other = model.generate(4, labels=labels, raster_constraint=raster, generator=seeded(4), top_k=None, top_p=None)
    assert not torch.equal(cached[0], other[0])  # the seed matters


@pytest.mark.parametrize("num_classes", [0, 3])
def test_cached_decoding_logits_equal_teacher_forcing(num_classes):
    model = tiny_model(num_classes=num_classes)
    labels = torch.tensor([1, 0, 2]) if num_classes else None
    codes, positions = model.generate(3, labels=labels, generator=seeded(0))
    with torch.no_grad():
        forced = model(codes, positions, labels)
        decoder = model.incremental_decoder(model.start_tokens(labels, 3, codes.device))
        for t in range(model.config.num_tokens):
            code_logits = decoder.code_logits()
            position_logits = decoder.position_logits(codes[:, t])
            decoder.append_position(positions[:, t])
            torch.testing.assert_close(code_logits, forced.code_logits[:, t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(position_logits, forced.position_logits[:, t], atol=1e-5, rtol=1e-5)
    assert t == model.config.num_tokens - 1  # the last step was compared


# ----------------------------------------------------------------------------- position constraints

def _prefer_last_cell(model: Stackformer) -> Stackformer:
    """Make the position head strongly prefer the last cell, so constraints decide the positions."""
    with torch.no_grad():
        model.position_norm.weight.zero_()
        model.position_norm.bias.fill_(1.0)
        model.position_head.weight.copy_(torch.arange(model.config.num_cells + 1.0)[:, None] / model.config.dim)
    return model


def test_raster_positions_ascending_and_leave_room():
    model = _prefer_last_cell(tiny_model())
    n, k = model.config.num_cells, model.config.num_tokens
    codes, positions = model.generate(5, generator=seeded(0), position_top_k=None, position_top_p=None,
                                      position_temperature=0.01)
    assert positions.shape == (5, k) and codes.shape == (5, k)
    assert (positions[:, 1:] > positions[:, :-1]).all()
    # Greedy towards the end of the grid must stop early enough for every remaining step.
    assert torch.equal(positions, torch.arange(n - k, n).expand(5, k))
    assert ((codes >= 0) & (codes < model.config.codebook_size)).all()


def test_positions_never_repeat():
    model = tiny_model()
    for raster in (True, False):
        _, positions = model.generate(16, generator=seeded(1), raster_constraint=raster, position_top_k=None,
                                      position_top_p=None)
        assert ((positions >= 0) & (positions < model.config.num_cells)).all()
        assert all(len(set(row)) == model.config.num_tokens for row in positions.tolist())
    # Without the raster constraint the strongly preferred cells come first, in any order.
    _, positions = _prefer_last_cell(tiny_model()).generate(2, generator=seeded(0), raster_constraint=False,
                                                            position_top_k=1)
    assert positions[0].tolist() == [15, 14, 13, 12, 11, 10]


# ----------------------------------------------------------------------------- completion (forced prefix)

@pytest.mark.parametrize("num_classes", [0, 3])
def test_forced_prefix_is_kept_and_continued_in_raster_order(num_classes):
    model = tiny_model(num_classes=num_classes, class_dropout=0.1 if num_classes else 0.0).double()
    n, k = model.config.num_cells, model.config.num_tokens
    labels = [2, 0] if num_classes else None
    prefix_codes = torch.tensor([[5, 9], [1, 1]])
    prefix_positions = torch.tensor([[0, 3], [2, 7]])
    guidance = dict(cfg_scale=2.0) if num_classes else {}
    kwargs = dict(labels=labels, prefix_codes=prefix_codes, prefix_positions=prefix_positions, top_k=None,
                  top_p=None, position_top_k=None, position_top_p=None, **guidance)
    codes, positions = model.generate(2, generator=[seeded(1), seeded(2)], **kwargs)
    assert torch.equal(codes[:, :2], prefix_codes) and torch.equal(positions[:, :2], prefix_positions)
    assert (positions[:, 1:] > positions[:, :-1]).all() and (positions < n).all()
    uncached = model.generate(2, generator=[seeded(1), seeded(2)], use_cache=False, **kwargs)
    assert torch.equal(codes, uncached[0]) and torch.equal(positions, uncached[1])
    # The continuation is conditioned on the prefix: another prefix, other tokens after it.
    other = model.generate(2, generator=[seeded(1), seeded(2)],
                           **{**kwargs, "prefix_codes": torch.tensor([[30, 31], [30, 31]])})
    assert not torch.equal(codes[:, 2:], other[0][:, 2:])
    # A prefix that leaves too few cells, or is not in raster order, is refused.
    with pytest.raises(ValueError, match="too few cells"):
        model.generate(1, labels=labels[:1] if labels else None, prefix_codes=[1], prefix_positions=[n - k + 1])
    with pytest.raises(ValueError, match="ascending"):
        model.generate(1, labels=labels[:1] if labels else None, prefix_codes=[1, 2], prefix_positions=[4, 3])


def test_forced_prefix_of_every_length_matches_unforced_sampling():
    """Forcing the first P steps of a sampled sequence with the same generators reproduces the sequence."""
    model = tiny_model(num_classes=3)
    codes, positions = model.generate(3, labels=[0, 1, 2], generator=[seeded(i) for i in range(3)])
    for p in range(1, model.config.num_tokens + 1):
        forced = model.generate(3, labels=[0, 1, 2], generator=[seeded(i) for i in range(3)],
                                prefix_codes=codes[:, :p], prefix_positions=positions[:, :p])
        assert torch.equal(forced[0], codes) and torch.equal(forced[1], positions), p


# ----------------------------------------------------------------------------- labels and guidance

def test_classifier_free_guidance():
    model = tiny_model(num_classes=4, class_dropout=0.1)
    kwargs = dict(generator=None, top_k=None, top_p=None)
    plain = model.generate(3, labels=[0, 1, 3], **{**kwargs, "generator": seeded(5)})
    scale_one = model.generate(3, labels=[0, 1, 3], cfg_scale=1.0, **{**kwargs, "generator": seeded(5)})
    guided = model.generate(3, labels=[0, 1, 3], cfg_scale=4.0, **{**kwargs, "generator": seeded(5)})
    assert torch.equal(plain[0], scale_one[0]) and torch.equal(plain[1], scale_one[1])
    assert not torch.equal(plain[0], guided[0])
    # At scale 0 only the unconditional logits count: the labels stop mattering.
    a = model.generate(3, labels=[0, 1, 3], cfg_scale=0.0, **{**kwargs, "generator": seeded(5)})
    b = model.generate(3, labels=[2, 2, 2], cfg_scale=0.0, **{**kwargs, "generator": seeded(5)})
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="class_dropout"):
        tiny_model(num_classes=4).generate(1, labels=[0], cfg_scale=2.0)


def test_labels_matter_and_are_checked():
    model = tiny_model(num_classes=4)
    a = model.generate(4, labels=[0, 0, 0, 0], generator=seeded(2), top_k=None, top_p=None)
    b = model.generate(4, labels=[3, 3, 3, 3], generator=seeded(2), top_k=None, top_p=None)
    assert not torch.equal(a[0], b[0])
    with pytest.raises(ValueError, match="class-conditional"):
        model.generate(1)
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        model.generate(1, labels=[4])
    with pytest.raises(ValueError, match="unconditional"):
        tiny_model().generate(1, labels=[0])


def test_per_sample_generators_make_batching_irrelevant():
    model = tiny_model(num_classes=3)
    batch = model.generate(3, labels=[0, 1, 2], generator=[seeded(10), seeded(11), seeded(12)])
    alone = model.generate(1, labels=[1], generator=[seeded(11)])
    assert torch.equal(batch[0][1:2], alone[0]) and torch.equal(batch[1][1:2], alone[1])


def test_generate_keeps_training_mode_and_has_no_dropout():
    model = tiny_model(dropout=0.5)
    model.train()
    a = model.generate(2, generator=seeded(0))
    assert model.training
    b = model.eval().generate(2, generator=seeded(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------- pipeline and command

def run_sample_command(argv):
    """`mvq sample ARGV` through the command's own parser (independent of the other commands)."""
    import argparse

    from mvq.commands import sample

    parser = argparse.ArgumentParser(prog="mvq")
    sample.register(parser.add_subparsers())
    args = parser.parse_args(["sample", *argv])
    return args.func(args)


TINY_VAE = dict(resolution=16, ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=64,
                keep_ratio=0.25, codebook_size=32, codebook_dim=8, demask_layers=1)


@pytest.fixture
def pretrained_pair(tmp_path):
    from mvq.models.mqvae import MQVAE

    vae = MQVAE.from_config(TINY_VAE)
    sf = tiny_model(num_classes=3, grid_size=vae.config.grid_size, num_tokens=vae.config.num_tokens,
                    codebook_size=vae.config.codebook_size)
    vae.save_pretrained(tmp_path / "vae")
    sf.save_pretrained(tmp_path / "sf", tokenizer=vae)
    return tmp_path / "sf", tmp_path / "vae"


def test_sample_command_writes_pngs_and_npz_independent_of_batch_size(pretrained_pair, tmp_path):
    from PIL import Image

    sf_dir, vae_dir = pretrained_pair
    for batch_size in (1, 3):
        run_sample_command(["--stackformer", str(sf_dir), "--vae", str(vae_dir), "--n", "4", "--batch-size",
              str(batch_size), "--labels", "2", "0", "--seed", "7", "--device", "cpu", "--out",
              str(tmp_path / f"out{batch_size}")])
    one = np.load(tmp_path / "out1" / "samples.npz")
    three = np.load(tmp_path / "out3" / "samples.npz")
    assert one["arr_0"].shape == (4, 16, 16, 3) and one["arr_0"].dtype == np.uint8
    assert np.array_equal(one["arr_0"], three["arr_0"])
    assert one["labels"].tolist() == [2, 0, 2, 0]
    assert not np.array_equal(one["arr_0"][0], one["arr_0"][2])  # same label, different sample
    pngs = sorted((tmp_path / "out3" / "images").glob("*.png"))
    assert [p.name for p in pngs] == ["000000.png", "000001.png", "000002.png", "000003.png"]
    assert np.array_equal(np.asarray(Image.open(pngs[3])), three["arr_0"][3])


def test_sample_command_needs_labels_for_a_class_model(pretrained_pair, tmp_path):
    sf_dir, vae_dir = pretrained_pair
    with pytest.raises(ValueError, match="--classes-balanced"):
        run_sample_command(["--stackformer", str(sf_dir), "--vae", str(vae_dir), "--n", "2", "--device", "cpu",
                            "--out", str(tmp_path / "out")])
    run_sample_command(["--stackformer", str(sf_dir), "--vae", str(vae_dir), "--n", "4", "--classes-balanced",
                        "--no-png", "--device", "cpu", "--out", str(tmp_path / "balanced")])
    saved = np.load(tmp_path / "balanced" / "samples.npz")
    assert saved["labels"].tolist() == [0, 1, 2, 0] and saved["arr_0"].shape == (4, 16, 16, 3)
    assert not (tmp_path / "balanced" / "images").exists()


def test_pipeline_matches_generate_and_checks_compatibility(pretrained_pair):
    from mvq.models.mqvae import MQVAE
    from mvq.evaluation.image_metrics import to_uint8_hwc
    from mvq.inference.pipeline import MVQPipeline, balanced_labels, sample_generator

    sf_dir, vae_dir = pretrained_pair
    pipe = MVQPipeline.from_pretrained(sf_dir, vae_dir, device="cpu")
    labels = balanced_labels(4, pipe.num_classes)
    assert labels == [0, 1, 2, 0]
    images = pipe(labels=labels, seed=3, batch_size=2)
    codes, positions = pipe.stackformer.generate(1, labels=[1], generator=[sample_generator(3, 1)])
    assert np.array_equal(images[1], to_uint8_hwc(pipe.vae.detokenize(codes, positions))[0])
    other = MQVAE.from_config({**TINY_VAE, "codebook_size": 16})
    with pytest.raises(ValueError, match="codebook_size: Stackformer 32 vs MQ-VAE 16"):
        MVQPipeline(pipe.stackformer, other)


# ----------------------------------------------------------------------------- settings and refusals

@pytest.mark.parametrize("setting", [dict(temperature=float("nan")), dict(temperature=float("inf")),
                                     dict(position_temperature=float("nan")), dict(cfg_scale=float("nan")),
                                     dict(cfg_scale=float("inf")), dict(top_p=float("nan")),
                                     dict(position_top_p=float("nan")), dict(temperature=0.0)])
def test_non_finite_or_invalid_sampling_settings_are_refused(setting):
    from mvq.errors import UserError
    from mvq.models.sampling import SamplingConfig

    name = next(iter(setting))
    with pytest.raises(UserError, match=name):
        SamplingConfig(**setting)
    with pytest.raises(UserError, match=name):
        tiny_model(num_classes=3, class_dropout=0.1).generate(1, labels=[0], **setting)


@pytest.mark.parametrize("flag", ["--temperature", "--cfg-scale", "--position-temperature", "--top-p"])
def test_sample_command_refuses_non_finite_settings_in_one_line(pretrained_pair, tmp_path, capsys, flag):
    from mvq.cli import main

    sf_dir, vae_dir = pretrained_pair
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--stackformer", str(sf_dir), "--vae", str(vae_dir), "--n", "1", "--labels", "0",
              "--device", "cpu", flag, "nan", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "finite" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "samples.npz").exists()


def test_sampling_config_travels_from_pipeline_to_generate(pretrained_pair):
    from mvq.models.sampling import SamplingConfig
    from mvq.inference.pipeline import MVQPipeline, sample_generator

    pipe = MVQPipeline.from_pretrained(*pretrained_pair, device="cpu")
    config = SamplingConfig(temperature=0.7, top_k=5, top_p=0.9, position_top_k=3, raster_constraint=False)
    images = pipe(labels=[2], seed=1, sampling=config)
    direct = pipe.stackformer.generate(1, labels=[2], sampling=config, generator=[sample_generator(1, 0)])
    keywords = pipe.stackformer.generate(1, labels=[2], temperature=0.7, top_k=5, top_p=0.9, position_top_k=3,
                                         raster_constraint=False, generator=[sample_generator(1, 0)])
    assert torch.equal(direct[0], keywords[0]) and torch.equal(direct[1], keywords[1])
    from mvq.evaluation.image_metrics import to_uint8_hwc
    assert np.array_equal(images[0], to_uint8_hwc(pipe.vae.detokenize(*direct))[0])
    default = pipe(labels=[2], seed=1)
    assert not np.array_equal(images, default)  # the settings reached the sampler


def test_sample_command_refuses_a_non_empty_folder_unless_overwrite(pretrained_pair, tmp_path):
    from mvq.errors import UserError

    sf_dir, vae_dir = pretrained_pair
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "000009.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    argv = ["--stackformer", str(sf_dir), "--vae", str(vae_dir), "--n", "2", "--labels", "1", "--device", "cpu",
            "--out", str(out)]
    with pytest.raises(UserError, match="--overwrite"):
        run_sample_command(argv)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "samples.npz").exists()
    run_sample_command([*argv, "--overwrite"])
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]
    assert np.load(out / "samples.npz")["arr_0"].shape == (2, 16, 16, 3)


def test_sample_command_streams_the_npz(pretrained_pair, tmp_path):
    """The .npz is written batch by batch; np.load and the evaluators' streaming reader both read it."""
    from mvq.evaluation.images import ImageSet

    sf_dir, vae_dir = pretrained_pair
    run_sample_command(["--stackformer", str(sf_dir), "--vae", str(vae_dir), "--n", "5", "--batch-size", "2",
                        "--labels", "0", "1", "--no-png", "--device", "cpu", "--out", str(tmp_path / "out")])
    saved = np.load(tmp_path / "out" / "samples.npz")
    assert saved["arr_0"].shape == (5, 16, 16, 3) and saved["labels"].tolist() == [0, 1, 0, 1, 0]
    streamed = torch.cat(list(ImageSet(tmp_path / "out" / "samples.npz").batches(2)))
    assert torch.equal(streamed, torch.from_numpy(saved["arr_0"]).permute(0, 3, 1, 2))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["samples.npz"]


def test_npz_writer_that_cannot_start_leaves_no_file(tmp_path, monkeypatch):
    from mvq.evaluation.npz_writer import NpzImageWriter

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array_header_1_0", no_space)
    with pytest.raises(OSError, match="No space"):
        NpzImageWriter(tmp_path / "samples.npz", 4, 16)
    assert list(tmp_path.iterdir()) == []


def test_stackformer_of_another_mqvae_is_refused(pretrained_pair, tmp_path, capsys):
    import json

    from mvq.errors import UserError
    from mvq.models.mqvae import MQVAE
    from mvq.models.pretrained import weights_fingerprint
    from mvq.inference.pipeline import MVQPipeline

    sf_dir, vae_dir = pretrained_pair
    vae = MQVAE.from_pretrained(vae_dir)
    other = MQVAE.from_config(TINY_VAE)  # same shapes, other weights
    other.save_pretrained(tmp_path / "other_vae")
    (sf_dir / "tokenizer.json").write_text(json.dumps({"mqvae_fingerprint": weights_fingerprint(vae)}))
    MVQPipeline.from_pretrained(sf_dir, vae_dir, device="cpu")  # its own MQ-VAE: fine
    with pytest.raises(UserError, match="allow-tokenizer-mismatch"):
        MVQPipeline.from_pretrained(sf_dir, tmp_path / "other_vae", device="cpu")
    argv = ["--stackformer", str(sf_dir), "--vae", str(tmp_path / "other_vae"), "--n", "1", "--labels", "0",
            "--device", "cpu", "--no-png"]
    with pytest.raises(UserError, match="different tokenizer"):
        run_sample_command([*argv, "--out", str(tmp_path / "refused")])
    with pytest.warns(UserWarning, match="different tokenizer"):
        run_sample_command([*argv, "--allow-tokenizer-mismatch", "--out", str(tmp_path / "allowed")])
    assert (tmp_path / "allowed" / "samples.npz").is_file()


def test_decoded_pixels_do_not_depend_on_the_batch_they_were_sampled_in():
    from mvq.models.mqvae import MQVAE
    from mvq.inference.pipeline import MVQPipeline

    torch.manual_seed(0)
    vae = MQVAE.from_config(TINY_VAE).eval()
    sf = tiny_model(num_classes=3, grid_size=vae.config.grid_size, num_tokens=vae.config.num_tokens,
                    codebook_size=vae.config.codebook_size)
    pipe = MVQPipeline(sf, vae)
    with torch.no_grad():
        codes, positions = vae.tokenize(torch.rand(11, 3, 16, 16) * 2 - 1)
    together = pipe.decode(codes, positions)
    alone = torch.cat([pipe.decode(codes[i:i + 1], positions[i:i + 1]) for i in range(11)])
    in_threes = torch.cat([pipe.decode(codes[i:i + 3], positions[i:i + 3]) for i in range(0, 11, 3)])
    assert torch.equal(together, alone) and torch.equal(together, in_threes)  # bit for bit, not just close
