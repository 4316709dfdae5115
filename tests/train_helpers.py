"""Small training configs and helpers shared by the training tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from tests.conftest import TINY_MQVAE


def tiny_stage1_config(tmp_path: Path, **sections) -> Path:
    config = {
        "model": dict(TINY_MQVAE),
        "data": {"dataset": "synthetic", "resolution": 32, "batch_size": 4, "num_workers": 0,
                 "num_train": 48, "num_val": 8},
        "loss": {"perceptual_weight": 0.0, "disc_weight": 0.75, "disc_start": 2},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "trainer": {"max_steps": 6, "val_check_interval": 3, "check_val_every_n_epoch": None,
                    "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_model_summary": False},
        "run": {"image_every_n_steps": 3, "num_log_images": 4, "checkpoint_every_n_steps": 2, "deterministic": True},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_training_until(config: Path, run_dir: Path, marker: Path, timeout: float = 240) -> subprocess.Popen:
    """`mvq train CONFIG --run-dir RUN` in a subprocess, returned once `marker` exists (to be interrupted)."""
    proc = subprocess.Popen([sys.executable, "-m", "mvq.cli", "train", str(config), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # as many threads as this process: float sums then agree with a run made here
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())})
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be interrupted"
        time.sleep(0.05)
    return proc


def model_state(run_dir: Path) -> tuple[dict, dict]:
    """A run's last checkpoint and its model (and loss) weights."""
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt, {k: v for k, v in ckpt["state_dict"].items() if k.startswith(("model.", "loss."))}


def assert_interrupted_run_resumes_exactly(config: Path, tmp_path: Path, steps: int) -> None:
    """Train CONFIG straight, and again stopped by SIGTERM at its first checkpoint, then `--resume`d:
    both end at `steps` with the same weights, bit for bit."""
    import signal

    import torch

    from mvq.training.run import train

    straight = train(str(config), [], run_dir=str(tmp_path / "straight"))
    interrupted = tmp_path / "interrupted"
    proc = start_training_until(config, interrupted, interrupted / "checkpoints" / "last.ckpt")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output
    assert "--resume" in output
    assert 2 <= model_state(interrupted)[0]["global_step"] < steps
    assert not list((interrupted / "checkpoints").glob("*.tmp"))
    train(None, [], resume=str(interrupted))
    (_, state_a), (final_b, state_b) = model_state(straight), model_state(interrupted)
    assert final_b["global_step"] == steps
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
