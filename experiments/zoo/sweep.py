"""The short sweep that chooses a zoo run's setting: arms trained side by side, compared at the same step.

Each arm is `mvq train CONFIG [overrides] --run-dir RUNS/ARM`, one torch thread per arm, all arms at
once (one core each), stopped with SIGTERM once its validation at `--steps` is logged (the stop
writes last.ckpt, so the chosen arm goes on as the long run with `mvq train --resume RUNS/ARM`).
Every arm has the config's schedule: the sweep compares the first `--steps` steps of long runs.
Writes each arm's validation curve, seconds per step and wall time to one JSON file.

    python experiments/zoo/sweep.py --config configs/zoo/mqvae_photos_64.yaml --steps 200 \
        --arm lr2e-4 optim.lr=2e-4 --arm lr6e-4 optim.lr=6e-4 \
        --common 'data.root=[../shared/photos,../shared/photos-extra]' --runs runs/zoo-sweep \
        --out experiments/results/zoo_photos_sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
VALIDATION = ("val/rec_loss", "val/psnr", "val/codebook_usage")


def validation_curves(run_dir: Path) -> dict:
    from mvq.demo.report import read_scalars

    logs = run_dir / "logs"
    if not logs.is_dir():
        return {}
    series = read_scalars(logs)
    return {tag: dict(zip(*series[tag])) for tag in VALIDATION if tag in series}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--arm", nargs="+", action="append", required=True, metavar=("NAME", "OVERRIDE"),
                        help="an arm: its name, then its overrides (key=value ...)")
    parser.add_argument("--common", nargs="*", default=[], metavar="OVERRIDE", help="overrides of every arm")
    parser.add_argument("--steps", type=int, required=True, help="compare the arms at this step's validation")
    parser.add_argument("--runs", type=Path, required=True, help="the arms' run folders go here")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    started, processes = time.time(), {}
    for name, *overrides in args.arm:
        command = [sys.executable, "-m", "mvq.cli", "train", str(args.config), *args.common, *overrides,
                   "trainer.enable_progress_bar=false", "--run-dir", str(args.runs / name)]
        log = open(args.runs.parent / f"{args.runs.name}-{name}.log", "w") if args.runs.parent.is_dir() else None
        processes[name] = (subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=log, stderr=subprocess.STDOUT),
                           command, time.time())
    finished = {}
    while len(finished) < len(processes):
        time.sleep(30)
        for name, (process, command, start) in processes.items():
            if name in finished:
                continue
            curves = validation_curves(REPOSITORY / args.runs / name)
            done = any(step + 1 >= args.steps for step in curves.get("val/rec_loss", {}))  # logged at step - 1
            if done or process.poll() is not None:
                if process.poll() is None:  # the training process only, never its data-loading workers
                    process.send_signal(signal.SIGTERM)  # writes last.ckpt: the arm can be resumed
                    process.wait()
                finished[name] = {"command": "mvq " + " ".join(command[3:]), "wall_seconds": round(time.time() - start),
                                  "exit_code": process.returncode, "validation": validation_curves(
                                      REPOSITORY / args.runs / name)}
    import torch

    record = {"config": str(args.config), "steps": args.steps, "threads_per_arm": 1, "arms": finished,
              "wall_seconds": round(time.time() - started), "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({name: {tag: values for tag, values in arm["validation"].items()}
                      for name, arm in finished.items()}, indent=1))


if __name__ == "__main__":
    main()
