import json
import math
import re

import pytest

from mvq.demo import DEMO_METRICS, run_demo


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
    assert "Rows, top to bottom: 0 circle" in page  # the sample rows carry the shapes' names
    assert "<td><code>recon_psnr</code></td>" in page and '"recon_psnr":' not in page  # a table, not raw JSON
    assert json.loads((out / "stackformer" / "config.json").read_text())["class_names"][0] == "circle"
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert referenced, "the report shows no images"
    for ref in referenced:
        assert (out / ref).is_file(), ref


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
