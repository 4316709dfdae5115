import json
import math
import re

import pytest

from mvq.demo import DEMO_METRICS, run_demo


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
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert referenced, "the report shows no images"
    for ref in referenced:
        assert (out / ref).is_file(), ref
