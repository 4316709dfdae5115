import json
import math
import re

import pytest
from PIL import Image

from mvq.demo import DEMO_METRICS, run_demo
from mvq.demo.pipeline import FIGURE_WIDTH, NUM_EXAMPLES
from mvq.models.card import ModelCard, example_images


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fast_demo_writes_every_output(tmp_path):
    out = tmp_path / "demo"
    metrics = run_demo(out, fast=True, progress=False)
    for path in ["index.html", "metrics.json", "samples.npz", "figures/reconstructions.png", "figures/samples.png",
                 "figures/stage1_loss.png", "figures/stage2_loss.png", "mqvae/config.json",
                 "mqvae/model.safetensors", "stackformer/config.json", "stackformer/model.safetensors",
                 "runs/mqvae/checkpoints/last.ckpt", "runs/stackformer/checkpoints/last.ckpt"]:
        assert (out / path).is_file(), path
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == pytest.approx(metrics, nan_ok=True)
    for key in DEMO_METRICS:
        assert key in saved and math.isfinite(saved[key]), key
    assert saved["num_classes"] == 4 and saved["num_samples"] == 16
    page = (out / "index.html").read_text()
    assert "<td><code>recon_psnr</code></td>" in page and '"recon_psnr":' not in page  # a table, not raw JSON
    assert json.loads((out / "stackformer" / "config.json").read_text())["class_names"][0] == "circle"
    shown = re.findall(r'<img( class="plot")? src="([^"]+)" width=(\d+) height=(\d+)', page)
    assert len(shown) == 5, "the report shows every figure"
    for plot, ref, width, height in shown:
        with Image.open(out / ref) as figure:  # shown at its own size: the browser never rescales (blurs) it
            assert figure.size == (int(width), int(height)), ref
            assert plot or figure.width <= FIGURE_WIDTH, ref
    # The models carry cards saying what they were trained on, and the tokenizer a few held-out examples.
    for folder in ("mqvae", "stackformer"):
        card = ModelCard.load(out / folder)
        assert "synthetic 16×16 images of coloured shapes" in card.training_data and card.command == "mvq demo --fast"
    assert ModelCard.load(out / "mqvae").metrics["recon_psnr"] == pytest.approx(saved["recon_psnr"])
    examples = example_images(out / "mqvae")
    assert len(examples) == NUM_EXAMPLES and Image.open(examples[0]).size == (16, 16)


def test_demo_refuses_bad_input_before_touching_the_output_folder(tmp_path):
    from mvq.errors import UserError

    out = tmp_path / "work"
    for name in ["runs/mine/last.ckpt", "tokens/part.npz", "mqvae/config.json", "figures/plot.png"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("user data")
    with pytest.raises(UserError, match="no such folder"):
        run_demo(out, data=str(tmp_path / "typo"), fast=True, progress=False)
    with pytest.raises(UserError, match="not made by mvq demo"):
        run_demo(out, fast=True, progress=False)
    for name in ["runs/mine/last.ckpt", "tokens/part.npz", "mqvae/config.json", "figures/plot.png"]:
        assert (out / name).read_text() == "user data", name
    assert not (out / ".mvq-demo").exists()


def test_demo_folder_replaces_only_its_own_outputs(tmp_path):
    from mvq.demo.pipeline import DEMO_OUTPUTS, MARKER, prepare_output_folder

    out = prepare_output_folder(tmp_path / "new")  # a new folder becomes the demo's
    assert (out / MARKER).is_file()
    for name in DEMO_OUTPUTS:  # as an earlier demo leaves them
        (out / name).mkdir() if "." not in name else (out / name).write_text("old")
    (out / "runs" / "old.txt").write_text("old")
    (out / "notes.txt").write_text("mine")
    prepare_output_folder(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "notes.txt"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (prepare_output_folder(empty) / MARKER).is_file()
    file = tmp_path / "file"
    file.write_text("x")
    from mvq.errors import UserError

    with pytest.raises(UserError, match="is a file"):
        prepare_output_folder(file)


def test_metrics_are_shown_as_a_person_reads_them():
    from mvq.demo.report import format_metric

    assert [format_metric(v) for v in (25.1637218, 4.0, 1234567.0, float("nan"), 0.000123456, "x")] == \
        ["25.16", "4", "1,234,567", "—", "0.0001235", "x"]


def test_labelled_figure_puts_labels_beside_sharp_pictures():
    import numpy as np
    import torch

    from mvq.visualize import fit_scale, labelled_figure

    torch.manual_seed(0)
    rows = [torch.rand(3, 3, 4, 4) * 2 - 1 for _ in range(2)]
    figure = np.asarray(labelled_figure(rows, ["first row", "a longer second row"], scale=5,
                                        column_labels=["a", "b", "c"]))
    h, w = figure.shape[:2]
    left, top = w - 3 * (20 + 2), h - 2 * (20 + 2)  # where the first picture starts: 3 columns, 2 rows, 2 px gaps
    assert left > 20 and top > 10  # room for the labels: a margin left and one on top
    assert (figure[:, :left - 2] < 128).any() and (figure[:top - 2, left:] < 128).any()  # the labels are drawn there
    for r, row in enumerate(rows):
        for c in range(3):
            y, x = top + r * 22, left + c * 22
            expected = ((row[c] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            block = figure[y:y + 20, x:x + 20]
            assert np.array_equal(block[::5, ::5], expected)  # every pixel a 5×5 block: nothing drawn over it
            assert np.array_equal(block, expected.repeat(5, 0).repeat(5, 1))
    assert fit_scale(16, columns=16, width=940, margin=100) == 3  # 100 + 16·(48 + 2) + 2 ≤ 940 < … at 4
    assert fit_scale(64, columns=40, width=940) == 1  # never below 1
