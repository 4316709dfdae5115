"""The zoo: releasing a trained tokenizer (experiments/zoo/release.py), and every released model's card
against its recorded measurement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mvq.models.card import ModelCard
from mvq.models.hub import zoo_models
from mvq.models.zoo import example_check

ROOT = Path(__file__).resolve().parents[1]
RELEASED = {name: folder for name, folder in zoo_models().items() if ModelCard.load(folder) is not None}


@pytest.mark.parametrize("name", sorted(RELEASED) or [pytest.param(None, marks=pytest.mark.skip(
    reason="no released zoo model yet (zoo/README.md lists those in training)"))])
def test_a_released_model_reproduces_its_record_on_its_examples(name):
    """The card states the recorded metrics, and the model gives the recorded numbers on its fixed examples
    again: a damaged file or a changed model (or decoder) cannot pass."""
    card = ModelCard.load(RELEASED[name])
    record = json.loads((ROOT / "experiments" / "results" / f"zoo_{name}.json").read_text())
    assert card.metrics == record["metrics"] and card.metrics_command == record["metrics_command"]
    assert card.training_data and card.command and card.license
    if "tokenizer" in record:
        check = example_check(RELEASED[record["tokenizer"]], RELEASED[name], record["example_labels"])
        assert check["examples_nll_nats"] == pytest.approx(record["check"]["examples_nll_nats"], rel=1e-4)
    else:
        check = example_check(RELEASED[name])
        assert check["examples_psnr"] == pytest.approx(record["check"]["examples_psnr"], abs=0.01)


@pytest.mark.slow
def test_release_exports_measures_and_writes_the_card(tmp_path):
    from mvq.training.run import train
    from tests.train_helpers import tiny_stage1_config

    config = tiny_stage1_config(tmp_path, trainer={"max_steps": 2, "val_check_interval": 2},
                                run={"image_every_n_steps": 0})
    run = train(str(config), [], run_dir=str(tmp_path / "run"))
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "zoo" / "release.py"), "--run", str(run),
                           "--name", "test-tiny", "--summary", "A tiny test tokenizer.",
                           "--training-data", "48 synthetic images (made by code).", "--command", "mvq train x",
                           "--zoo", str(tmp_path / "zoo"), "--results", str(tmp_path), "--num-images", "8"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    card = ModelCard.load(tmp_path / "zoo" / "test-tiny")
    record = json.loads((tmp_path / "zoo_test-tiny.json").read_text())
    assert card.metrics == record["metrics"] and 0 < card.metrics["psnr"] < 60
    assert {"psnr", "ssim", "l1", "codebook_usage_percent"} <= set(card.metrics)
    assert card.training_data == "48 synthetic images (made by code)." and "--num-images 8" in card.metrics_command
    assert (tmp_path / "zoo" / "test-tiny" / "model.safetensors").is_file()
    assert len(list((tmp_path / "zoo" / "test-tiny" / "examples").glob("*.png"))) == 4  # one per shape kind
    assert record["example_labels"] == [0, 1, 2, 3]
    assert record["check"] == example_check(tmp_path / "zoo" / "test-tiny")
    assert "reconstructions.png" in card.notes and (tmp_path / "zoo" / "test-tiny" / "reconstructions.png").is_file()
