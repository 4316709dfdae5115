"""The zoo: releasing trained models (experiments/zoo/release.py), and every released model against its
recorded measurement."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvq.models.card import ModelCard
from mvq.models.hub import zoo_models
from mvq.models.zoo import example_check

ROOT = Path(__file__).resolve().parents[1]
RELEASED = {name: folder for name, folder in zoo_models().items() if ModelCard.load(folder) is not None}


def zoo_script(name: str):
    """experiments/zoo/NAME.py as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "zoo" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(RELEASED) or [pytest.param(None, marks=pytest.mark.skip(
    reason="no released zoo model yet (zoo/README.md lists those in training)"))])
def test_a_released_model_reproduces_its_record_on_its_examples(name):
    """The card states the recorded metrics, and the model gives the recorded numbers on its fixed examples
    again: a damaged file or a changed model (or decoder) cannot pass."""
    card = ModelCard.load(RELEASED[name])
    record = json.loads((ROOT / "experiments" / "results" / f"zoo_{name}.json").read_text())
    assert card.metrics == record["metrics"] and card.metrics_command == record["metrics_command"]
    assert card.training_data and card.command and card.license
    assert not card.superseded_by or card.superseded_by in RELEASED  # what replaces it is in the zoo
    if "tokenizer" in record:
        check = example_check(RELEASED[record["tokenizer"]], RELEASED[name], record["example_labels"])
        assert check["examples_nll_nats"] == pytest.approx(record["check"]["examples_nll_nats"], rel=1e-4)
    else:
        check = example_check(RELEASED[name])
        assert check["examples_psnr"] == pytest.approx(record["check"]["examples_psnr"], abs=0.01)


def test_a_superseded_tokenizer_comes_after_those_in_use_and_its_card_says_by_what(tmp_path, monkeypatch):
    """The app's first photo tab is the zoo's current tokenizer; the one it replaced stays loadable, listed last."""
    import mvq.models.hub
    from mvq.models.mqvae import MQVAE, MQVAEConfig
    from mvq.models.zoo import zoo_tokenizers

    from tests.conftest import TINY_MQVAE

    vae = MQVAE(MQVAEConfig(**TINY_MQVAE))
    for name in ("a-old", "b-new", "c-other"):
        vae.save_pretrained(tmp_path / name)
        ModelCard(name=name, summary="A tiny tokenizer.", training_data="None.",
                  superseded_by="b-new" if name == "a-old" else "").save(tmp_path / name)
    monkeypatch.setattr(mvq.models.hub, "zoo_dirs", lambda: [tmp_path])
    assert list(zoo_tokenizers()) == ["b-new", "c-other", "a-old"]
    card = ModelCard.load(tmp_path / "a-old")
    assert card.superseded_by == "b-new" and "Superseded by [`b-new`](../b-new/README.md)" in card.markdown()
    assert "Superseded" not in ModelCard.load(tmp_path / "b-new").markdown()


@pytest.mark.slow
def test_release_of_a_tokenizer_then_of_a_stackformer_on_its_tokens(tmp_path, monkeypatch, capsys):
    from mvq.training.run import train
    from tests.train_helpers import tiny_stage1_config

    config = tiny_stage1_config(tmp_path, trainer={"max_steps": 2, "val_check_interval": 2},
                                run={"image_every_n_steps": 0, "checkpoint_every_n_steps": 1})
    run = train(str(config), [], run_dir=str(tmp_path / "run"))
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "zoo" / "release.py"), "--run", str(run),
                           "--name", "test-tiny", "--summary", "A tiny test tokenizer.",
                           "--training-data", "48 synthetic images (made by code).", "--command", "mvq train x",
                           "--zoo", str(tmp_path / "zoo"), "--results", str(tmp_path), "--num-images", "8",
                           "--data-config", str(config), "--keeps", "4"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    card = ModelCard.load(tmp_path / "zoo" / "test-tiny")
    record = json.loads((tmp_path / "zoo_test-tiny.json").read_text())
    assert card.metrics == record["metrics"] and 0 < card.metrics["psnr"] < 60
    assert {"psnr", "ssim", "l1", "codebook_usage_percent"} <= set(card.metrics)
    assert card.training_data == "48 synthetic images (made by code)." and "--num-images 8" in record["release_command"]
    # The card's command measures the released weights by name (not the run, which may train on) to its numbers.
    import shlex

    from mvq.cli import main as mvq_main

    # With --keeps, also at each budget asked: one command per budget.
    commands = [shlex.split(line) for line in card.metrics_command.splitlines()]
    assert len(commands) == 2 and "--keep" not in commands[0]
    assert commands[1][commands[1].index("--keep") + 1] == "4"
    monkeypatch.setenv("MVQ_ZOO", str(tmp_path / "zoo"))
    for command, psnr in zip(commands, (card.metrics["psnr"], card.metrics["psnr_keep4"])):
        assert command[:5] == ["mvq", "eval", "recon", "--vae", "test-tiny"] and "--n" in command
        with pytest.raises(SystemExit) as done:  # eval recon returns its exit status
            mvq_main([*command[1:], "--no-fid", "--no-lpips", "--out", str(tmp_path / "again.json")])
        assert done.value.code == 0
        again = json.loads((tmp_path / "again.json").read_text())["metrics"]
        assert again["psnr"] == pytest.approx(psnr, abs=1e-4)
    assert card.metrics["psnr_keep4"] < card.metrics["psnr"]  # 4 of the 16 cells it was trained to keep
    (tmp_path / "other").mkdir()
    other = tiny_stage1_config(tmp_path / "other", data={"num_val": 4})  # other images: refused before any export
    release = zoo_script("release")
    monkeypatch.setattr(sys, "argv", ["release.py", "--run", str(run), "--name", "test-refused", "--summary", "-",
                                      "--training-data", "-", "--command", "-", "--zoo", str(tmp_path / "zoo"),
                                      "--results", str(tmp_path), "--data-config", str(other)])
    with pytest.raises(SystemExit):
        release.main()
    assert "would measure other images" in capsys.readouterr().err
    assert not (tmp_path / "zoo" / "test-refused").exists()
    assert (tmp_path / "zoo" / "test-tiny" / "model.safetensors").is_file()
    assert len(list((tmp_path / "zoo" / "test-tiny" / "examples").glob("*.png"))) == 4  # one per shape kind
    assert record["example_labels"] == [0, 1, 2, 3]
    assert record["check"] == example_check(tmp_path / "zoo" / "test-tiny")
    assert "reconstructions.png" in card.notes and (tmp_path / "zoo" / "test-tiny" / "reconstructions.png").is_file()

    # A Stackformer trained on the released tokenizer's tokens, released with generation metrics (FID by a
    # stand-in feature network: what is checked here is the release, not Inception).
    import mvq.evaluation
    import yaml
    from mvq.data import build_dataset
    from mvq.data.config import DataConfig
    from mvq.inference.tokenizing import tokenize_dataset
    from mvq.models.tokenizer import load_tokenizer
    from tests.test_eval_inputs import CountingNetwork

    monkeypatch.setattr(mvq.evaluation, "InceptionV3", CountingNetwork)
    tokenizer = tmp_path / "zoo" / "test-tiny"
    data = DataConfig(**record["data"])
    for split, store in (("train", "tokens"), ("val", "val_tokens")):
        tokenize_dataset(load_tokenizer(tokenizer), build_dataset(data, split, augment=False), tmp_path / store,
                         rank=0, world_size=1, progress=False)
    stage2 = {"stage": 2, "vae": str(tokenizer),
              "model": {"num_classes": 4, "code_layers": 1, "position_layers": 1, "dim": 32, "heads": 2,
                        "class_dropout": 0.1},
              "data": {"tokens": str(tmp_path / "tokens"), "val_tokens": str(tmp_path / "val_tokens"),
                       "batch_size": 8, "num_workers": 0},
              "trainer": {"max_steps": 2, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                          "enable_model_summary": False},
              "run": {"image_every_n_steps": 0, "checkpoint_every_n_steps": 2}}
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(stage2))
    run2 = train(str(tmp_path / "stage2.yaml"), [], run_dir=str(tmp_path / "run2"))
    monkeypatch.setattr(sys, "argv", [
        "release.py", "--run", str(run2), "--name", "test-tiny-gen", "--summary", "A tiny test generator.",
        "--training-data", "its tokens.", "--command", "mvq train y", "--zoo", str(tmp_path / "zoo"),
        "--results", str(tmp_path), "--tokenizer", str(tokenizer), "--fid-reference", str(tmp_path / "ref.npz"),
        "--num-samples", "8", "--sample-batch-size", "4", "--cfg-scale", "1.5", "--work", str(tmp_path / "work"),
        "data.num_train=128"])
    release.main()
    card = ModelCard.load(tmp_path / "zoo" / "test-tiny-gen")
    record = json.loads((tmp_path / "zoo_test-tiny-gen.json").read_text())
    assert card.metrics == record["metrics"] and (tmp_path / "ref.npz").is_file()
    assert {"fid", "class_consistency", "classifier_accuracy", "nll_per_image_nats"} == set(card.metrics)
    assert card.metrics["fid"] > 0 and 0 <= card.metrics["class_consistency"] <= 1
    assert record["sampling"]["cfg_scale"] == 1.5 and record["tokenizer"] == "test-tiny"
    assert record["check"] == example_check(tokenizer, tmp_path / "zoo" / "test-tiny-gen", [0, 1, 2, 3])
    assert "samples.png" in card.notes and (tmp_path / "zoo" / "test-tiny-gen" / "samples.png").is_file()
    # The card's command measures the released Stackformer again from the zoo and the data alone, to its numbers.
    command = shlex.split(card.metrics_command)
    assert command[:3] == ["python", "experiments/zoo/remeasure.py", "test-tiny-gen"]
    remeasure = zoo_script("remeasure")
    monkeypatch.setattr(sys, "argv", ["remeasure.py", *command[2:], "--results", str(tmp_path),
                                      "--work", str(tmp_path / "again"), "--out", str(tmp_path / "again.json")])
    remeasure.main()
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["card"] == card.metrics
    assert again["again"] == pytest.approx(card.metrics, abs=1e-6)
    assert (tmp_path / "again" / "test-tiny-gen" / "samples.png").is_file()
    for name, val_tokens, message in (("test-tiny", command[6], "is a tokenizer; its card's command measures it"),
                                      ("test-tiny-gen", str(tmp_path / "absent"), "does not exist; make it first")):
        monkeypatch.setattr(sys, "argv", ["remeasure.py", name, "--fid-reference", command[4], "--val-tokens",
                                          val_tokens, "--results", str(tmp_path)])
        with pytest.raises(SystemExit, match=message):
            remeasure.main()

    # The guidance sweep that chooses the release's scale: every scale measured, the lowest FID chosen.
    guidance = zoo_script("guidance")
    monkeypatch.setattr(sys, "argv", [
        "guidance.py", "--run", str(run2), "--tokenizer", str(tokenizer), "--fid-reference", str(tmp_path / "ref.npz"),
        "--scales", "1", "3", "--num-samples", "8", "--sample-batch-size", "4", "--work", str(tmp_path / "sweep"),
        "--results", str(tmp_path), "--out", str(tmp_path / "guidance.json"), "data.num_train=128"])
    guidance.main()
    sweep = json.loads((tmp_path / "guidance.json").read_text())
    assert [arm["cfg_scale"] for arm in sweep["arms"]] == [1.0, 3.0]
    assert sweep["chosen_cfg_scale"] == min(sweep["arms"], key=lambda arm: arm["fid_vs_training_images"])["cfg_scale"]
    assert all(0 <= arm["class_consistency"] <= 1 for arm in sweep["arms"])


def test_release_examples_are_one_per_class_also_from_a_subset(tmp_path):
    """A validation split limited by data.max_val_images is a Subset: its classes are its dataset's."""
    from torch.utils.data import Subset

    from mvq.data.synthetic import SyntheticShapes

    release = zoo_script("release")
    labels = release.write_examples(tmp_path, Subset(SyntheticShapes(12, 16, seed=0, split="val"), range(1, 12)))
    assert labels == [0, 1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "examples").glob("*.png")) == [
        "00-circle.png", "01-square.png", "02-triangle.png", "03-cross.png"]


def readme_zoo_examples() -> list[str]:
    """The README's Python examples that use zoo models, in order (they build on one another)."""
    text = (ROOT / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    return [block for block in blocks if any(f'from_pretrained("{name}' in block for name in RELEASED)]


@pytest.mark.slow
def test_the_readme_zoo_examples_run_as_written(tmp_path, monkeypatch, capsys):
    """Run as a new user pastes them: each writes its picture, and each `# should print X` is printed."""
    blocks = readme_zoo_examples()
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    expected = [line.split("# should print ", 1)[1].strip() for block in blocks for line in block.splitlines()
                if "# should print " in line]
    assert expected and all(line in printed for line in expected), printed
    assert (tmp_path / "photo_reconstruction.png").is_file() and (tmp_path / "samples.png").is_file()


def test_given_examples_are_the_central_squares_at_the_model_resolution(tmp_path):
    """Examples taken from a folder (data that may not be redistributed keep theirs out of the zoo)."""
    import numpy as np
    from PIL import Image

    from mvq.errors import UserError

    release = zoo_script("release")
    source = tmp_path / "photos"
    source.mkdir()
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, 40:80] = (255, 0, 0)  # only the central square is red
    Image.fromarray(wide).save(source / "b-wide.jpg", quality=100)
    Image.fromarray(np.full((64, 32, 3), 200, np.uint8)).save(source / "a-tall.png")
    (source / "notes.txt").write_text("not an image")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    release.write_given_examples(model_dir, source, 16)
    written = sorted((model_dir / "examples").iterdir())
    assert [p.name for p in written] == ["00-a-tall.png", "01-b-wide.png"]
    red = np.asarray(Image.open(written[1]), dtype=np.float32)
    assert red.shape == (16, 16, 3) and red[..., 0].min() > 200 and red[..., 1:].max() < 60
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no .png or .jpg"):
        release.write_given_examples(model_dir, empty, 16)


def test_quality_curve_counts_training_time_within_spans_only(tmp_path):
    """Two spans of one run, an idle day between them: the hours are those of training."""
    from torch.utils.tensorboard import SummaryWriter

    curve = zoo_script("curve")
    logs = tmp_path / "logs"
    logs.mkdir()
    for created, scalars in ((1_000, [("val/psnr", 10, 15.0, 1_360), ("train/l1_loss", 20, 0.3, 4_600)]),
                             (90_000, [("val/psnr", 30, 17.5, 91_800)])):
        writer = SummaryWriter(str(tmp_path / str(created)))
        for tag, step, value, wall in scalars:
            writer.add_scalar(tag, value, step, walltime=wall)
        writer.close()
        (written,) = (tmp_path / str(created)).glob("events.out.tfevents.*")
        written.rename(logs / f"events.out.tfevents.{created}.host.1.0")
    rows = curve.validation_curve(logs)
    assert [(row["step"], row["hours"], row["val/psnr"]) for row in rows] == [(10, 0.1, 15.0), (30, 1.5, 17.5)]


def test_quality_curve_draws_the_tag_asked_and_names_the_logged_ones_when_it_is_missing(tmp_path):
    """An any-K run is drawn at a budget (val/psnr_keep64); a tag the run never logged is one line naming those it did."""
    curve = zoo_script("curve")
    any_k = [{"step": 100, "hours": 0.1, "val/psnr": 20.0, "val/psnr_keep64": 18.0}]
    fixed = [{"step": 100, "hours": 0.1, "val/psnr": 19.0}]
    out = tmp_path / "curve.png"
    curve.plot({"any-K at 64": (any_k, "val/psnr_keep64"), "fixed": (fixed, "val/psnr")}, out, "", "step")
    assert out.stat().st_size > 0
    with pytest.raises(SystemExit, match=r"logged no val/psnr_keep16; the tags logged: \['val/psnr'\]"):
        curve.plot({"fixed": (fixed, "val/psnr_keep16")}, tmp_path / "other.png", "", "step")


def test_a_kept_run_restores_a_missing_or_older_run_folder_and_never_one_ahead(tmp_path):
    import torch

    from mvq.training.kept_state import LAST, keep_run, restore_run, trained_steps

    def run_at(folder: Path, step: int) -> Path:
        (folder / "logs").mkdir(parents=True)
        (folder / "checkpoints").mkdir()
        (folder / "config.yaml").write_text(f"step: {step}\n")
        (folder / "logs" / f"events.{step}").write_text("")
        torch.save({"state_dict": {}, "mvq_state": {}, "global_step": step}, folder / LAST)
        return folder

    kept, run = tmp_path / "kept", tmp_path / "run"
    keep_run(run_at(tmp_path / "first", 5), kept)
    assert trained_steps(run) == 0 and restore_run(run, kept) and trained_steps(run) == 5  # a fresh clone
    assert not restore_run(run, kept)  # as far along: nothing copied
    ahead = run_at(tmp_path / "ahead", 9)
    assert not restore_run(ahead, kept) and trained_steps(ahead) == 9  # a run ahead of its copy is never overwritten
    keep_run(ahead, kept)
    assert trained_steps(kept) == 9 and sorted(p.name for p in (kept / "logs").iterdir()) == ["events.5", "events.9"]
    assert restore_run(run, kept) and (run / "config.yaml").read_text() == "step: 9\n"


def test_a_kept_folder_whose_checkpoint_git_would_ignore_is_refused_before_training(tmp_path):
    """Committing such a folder keeps the logs and drops last.ckpt: the next clone would train from step 0."""
    from mvq.training.kept_state import require_committable

    subprocess.run(["git", "init", "--quiet", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("*.ckpt\n")
    with pytest.raises(SystemExit, match=r"kept/checkpoints/last.ckpt is ignored by git.*add a '!' rule"):
        require_committable(tmp_path / "kept")
    (tmp_path / ".gitignore").write_text("*.ckpt\n!kept/checkpoints/last.ckpt\n")
    require_committable(tmp_path / "kept")
    # the repository's own kept folders: a zoo run's and a study arm's
    require_committable(ROOT / "zoo" / "training" / "photos-64")
    require_committable(ROOT / "experiments" / "any_k" / "training" / "rate-distortion-photos" / "any-k")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_span_continues_from_the_kept_copy_and_keeps_its_end(tmp_path, monkeypatch):
    """A fresh clone holds only the kept copy: the span trains on from it, stops at the step asked, and keeps the new end."""
    import shutil
    import signal

    from tests.train_helpers import start_training_until, tiny_stage1_config

    span = zoo_script("span")
    config = tiny_stage1_config(tmp_path, trainer={"max_steps": 100_000, "val_check_interval": 50},
                                run={"image_every_n_steps": 0, "checkpoint_every_n_steps": 1})
    run, keep = tmp_path / "run", tmp_path / "keep"
    first = start_training_until(config, run, run / "checkpoints" / "last.ckpt")
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    span.keep_run(run, keep)
    started = span.trained_steps(keep)
    shutil.rmtree(run)  # what a fresh clone lacks
    monkeypatch.setattr(sys, "argv", ["span.py", "--run", str(run), "--keep", str(keep), "--seconds", "150",
                                      "--until-step", str(started + 3)])
    began = time.monotonic()
    span.main()
    ended = span.trained_steps(keep)
    assert time.monotonic() - began < 120  # the step ended it, not the time
    assert started >= 2 and ended >= started + 3 and span.trained_steps(run) == ended
    assert (keep / "config.yaml").read_text() == (run / "config.yaml").read_text()
    assert len(list((keep / "logs").glob("events.out.tfevents.*"))) == 2  # one per span


def test_reconstruction_figure_has_a_row_of_kept_cells_for_an_mqvae_only(tmp_path):
    """An MQ-VAE's figure shows the cells it kept; a VQGAN keeps every cell, so its figure has two rows."""
    from PIL import Image

    from mvq.models.card import EXAMPLES_DIR
    from mvq.models.mqvae import MQVAE, MQVAEConfig
    from mvq.models.vqgan import VQGAN, VQGANConfig

    release = zoo_script("release")
    sizes = dict(resolution=16, ch=16, norm_groups=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                 z_channels=32, codebook_size=8, codebook_dim=4)
    heights, widths = {}, {}
    for name, model in (("mqvae", MQVAE(MQVAEConfig(**sizes, keep_ratio=0.25, demask_layers=1))),
                        ("vqgan", VQGAN(VQGANConfig(**sizes)))):
        folder = tmp_path / name
        model.save_pretrained(folder)
        (folder / EXAMPLES_DIR).mkdir()
        for i in range(2):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(folder / EXAMPLES_DIR / f"0{i}.png")
        with Image.open(folder / release.reconstruction_figure(folder)) as figure:
            heights[name], widths[name] = figure.height, figure.width
    assert heights["vqgan"] < heights["mqvae"] * 0.8
    with Image.open(tmp_path / "mqvae" / release.reconstruction_figure(tmp_path / "mqvae", [1, 2])) as figure:
        # original, then a reconstruction and kept cells at 1, 2 and the model's own 4 of 16 cells: 7 rows of 3's height
        assert figure.height == pytest.approx(heights["mqvae"] * 7 / 3, rel=0.1)
        assert figure.width <= widths["mqvae"]  # its labels ("4 tokens", "4 cells kept", ...) no wider than "reconstruction"


def test_paired_comparison_judges_differences_by_their_standard_error(tmp_path, monkeypatch):
    """Per-image differences decide at two standard errors, in the direction each metric improves; a VQGAN
    given a budget is refused before any image is read."""
    import torch

    from mvq.models.vqgan import VQGAN, VQGANConfig

    paired = zoo_script("paired")
    base = torch.linspace(20, 30, 100)
    noise = torch.randn(100, generator=torch.Generator().manual_seed(0))
    assert paired.paired_difference(base + 1 + noise, base, higher_is_better=True)["verdict"] == "better"
    assert paired.paired_difference(base + 1 + noise, base, higher_is_better=False)["verdict"] == "worse"
    assert paired.paired_difference(base + 0.01 * noise, base, True)["verdict"].startswith("no difference")
    difference = paired.paired_difference(base + 1 + noise, base, True)
    assert difference["difference"] == pytest.approx(1 + float(noise.mean()))
    assert difference["standard_error"] == pytest.approx(float(noise.std()) / 10)
    assert paired.parse_model("photos-64@32") == ("photos-64", 32) and paired.parse_model("org/x") == ("org/x", None)
    with pytest.raises(SystemExit, match="a count of cells"):
        paired.parse_model("photos-64@0.5")
    VQGAN(VQGANConfig(resolution=16, ch=16, norm_groups=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                      z_channels=32, codebook_size=8, codebook_dim=4)).save_pretrained(tmp_path / "vqgan")
    vqgan = str(tmp_path / "vqgan")
    monkeypatch.setattr("sys.argv", ["paired.py", "--data", str(tmp_path / "no-images"), "--model", vqgan,
                                     "--model", f"{vqgan}@4", "--out", str(tmp_path / "out.json")])
    with pytest.raises(SystemExit, match="is a VQGAN, which keeps every cell"):
        paired.main()


def test_the_photo_tokenizers_compared_differ_in_their_model_alone():
    """photos-64, its any-K twin and the VQGAN baselines: the same data, loss, schedule and run settings
    (the any-K model's validation also measures other budgets, which trains nothing differently);
    every config valid; the token counts the comparisons are about."""
    from mvq.config import load_yaml
    from mvq.models.tokenizer import tokenizer_config

    folder = ROOT / "src" / "mvq" / "configs" / "zoo"
    names = ["mqvae_photos_64", "mqvae_photos_64_any_k", "vqgan_photos_64_f8", "vqgan_photos_64_f4"]
    raw = {name: load_yaml(folder / f"{name}.yaml") for name in names}

    def training_settings(name: str) -> dict:
        settings = {k: v for k, v in raw[name].items() if k != "model"}
        settings["run"] = {k: v for k, v in settings["run"].items() if k != "val_keep"}
        return settings

    for name in names[1:]:
        assert training_settings(name) == training_settings(names[0]), name
    models = {name: tokenizer_config(raw[name]["model"]) for name in names}
    assert [models[name].num_tokens for name in names] == [64, 256, 64, 256]
    assert models["mqvae_photos_64"].grid_size == models["mqvae_photos_64_any_k"].grid_size == 16
    assert models["mqvae_photos_64_any_k"].any_k and not models["mqvae_photos_64"].any_k
    assert raw["mqvae_photos_64_any_k"]["run"]["val_keep"] == [16, 64]  # the smallest trained K and photos-64's
    assert {f: getattr(models["mqvae_photos_64_any_k"], f) for f in ("ch", "ch_mult", "z_channels", "codebook_size")} \
        == {f: getattr(models["mqvae_photos_64"], f) for f in ("ch", "ch_mult", "z_channels", "codebook_size")}
