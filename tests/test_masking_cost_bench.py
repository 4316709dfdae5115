"""benchmarks/bench_masking_cost.py: the MQ-VAE and the VQGAN of the same widths timed side by side."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_masking_cost.py"


@pytest.mark.slow
def test_masking_cost_reports_the_ratio_and_the_modules_of_both_models():
    result = subprocess.run([sys.executable, str(BENCH), "--configs", "tiny", "--threads", "1"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = {r["bench"]: r for r in map(json.loads, result.stdout.splitlines())}
    step = records["masking_cost_train_step"]
    assert (step["kept_tokens"], step["vqgan_tokens"]) == (16, 64)
    assert step["ratio"] == pytest.approx(step["mqvae_s"]["median"] / step["vqgan_s"]["median"], rel=1e-2)
    seconds = records["masking_cost_forward_by_module"]["seconds"]
    assert {"encoder", "masker", "quantizer", "demasker", "decoder"} <= set(seconds["mqvae"])
    assert {"encoder", "quant_conv", "quantizer", "post_quant_conv", "decoder"} <= set(seconds["vqgan"])
    for profile in seconds.values():
        assert 0 < profile["encoder"] < profile["forward_total"]
