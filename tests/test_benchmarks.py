import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def run_gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GPU_CHECK), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_on_the_cpu():
    result = run_gpu_check("--dry-run", "--skip-tests")
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    names = [r["bench"] for r in records]
    assert names[0] == "environment" and records[0]["dry_run"] is True
    for check in ("check_mqvae_matches_cpu", "check_sampling"):
        assert next(r for r in records if r["bench"] == check)["passed"] is True
    for measured in ("stage1_train_step", "stackformer_train_step"):
        assert next(r for r in records if r["bench"] == measured)["s_per_step"] > 0
    sampling = [r for r in records if r["bench"] == "sampling"]
    assert {(r["compiled"], r["batch"]) for r in sampling} == {(False, 1), (False, 2), (True, 1), (True, 2)}
    assert all(r["images_per_s"] > 0 for r in sampling)
    assert records[-1] == {"bench": "gpu_check", "passed": True}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given on a machine without CUDA")
def test_gpu_check_without_cuda_says_how_to_dry_run():
    result = run_gpu_check()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device here; run with --dry-run to check the script on the CPU"]
