"""Stage-1 training throughput through the Lightning loop vs the bare network step.

Runs `mvq train` for a few steps on synthetic data (no checkpoints or images written in
the timed steps) and prints JSON lines with images/s for both, so the loop's overhead is
visible. Configs: the demo config and the paper config (256 px) at batch 2.
    python benchmarks/bench_training.py [--configs demo paper] [--steps N]
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from mvq.config import load_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class StepTimer(L.Callback):
    """Wall time of the training steps after the first (which pays for start-up)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)


def bare_step_seconds(model_config: dict, batch: int, resolution: int, steps: int) -> float:
    from mvq.models.mqvae import MQVAE

    model = MQVAE.from_config(model_config)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.rand(batch, 3, resolution, resolution) * 2 - 1
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model(x)
        ((out.reconstruction - x).abs().mean() + out.codebook_loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / steps


def loop_step_seconds(config_path: Path, overrides: list[str], steps: int) -> float:
    from mvq.training import run as run_module

    timer = StepTimer()
    original = L.Trainer.__init__

    @functools.wraps(original)  # keeps the signature that config validation reads
    def with_timer(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*(callbacks or []), timer], **kwargs)

    L.Trainer.__init__ = with_timer
    try:
        with tempfile.TemporaryDirectory() as folder:
            run_module.train(str(config_path), [*overrides, f"trainer.max_steps={steps + 1}",
                                                "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
                                                "run.image_every_n_steps=0", f"run.checkpoint_every_n_steps={10**6}"],
                             run_dir=str(Path(folder) / "run"))
    finally:
        L.Trainer.__init__ = original
    return sum(timer.times[1:]) / max(1, len(timer.times) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = {
        "demo": (CONFIGS / "demo" / "mqvae_shapes.yaml", []),
        "paper": (CONFIGS / "stage1" / "mqvae_imagenet_f8_r25.yaml",
                  ["data.dataset=synthetic", "data.batch_size=2", "data.num_train=64", "data.num_val=2",
                   "data.num_workers=0", "loss.perceptual_weight=0", "loss.disc_weight=0"]),
    }
    for name in args.configs:
        path, overrides = cases[name]
        raw = load_yaml(path)
        batch = int(next((o.split("=")[1] for o in overrides if o.startswith("data.batch_size=")),
                         raw["data"]["batch_size"]))
        loop = loop_step_seconds(path, overrides, args.steps)
        bare = bare_step_seconds(raw["model"], batch, raw["model"]["resolution"], args.steps)
        print(json.dumps({"bench": "stage1_training_throughput", "config": name, "batch": batch,
                          "threads": torch.get_num_threads(), "loop_images_per_s": round(batch / loop, 2),
                          "bare_step_images_per_s": round(batch / bare, 2),
                          "loop_overhead_percent": round(100 * (loop / bare - 1), 1),
                          "note": "same work in both (L1 + codebook loss; no LPIPS, no GAN)"}),
              flush=True)


if __name__ == "__main__":
    main()
