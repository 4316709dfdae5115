"""The short sweep that chooses a zoo run's setting: arms compared at the same step or the same wall time.

Each arm is `mvq train CONFIG [overrides] --run-dir RUNS/ARM` with one torch thread, stopped with
SIGTERM once its validation at `--steps` is logged, or once it has run `--seconds` (the stop writes
last.ckpt, so the chosen arm goes on as the long run with `mvq train --resume RUNS/ARM`). All arms
run at once, one core each, or with `--one-at-a-time` one after the other (when one core is free).
Every arm has the config's schedule: the sweep compares the first part of long runs. Arms of
different sizes are compared at equal wall time (quality per CPU-hour), so each validation is
recorded with the seconds since its arm started. Writes the curves and wall times to one JSON file.

    python experiments/zoo/sweep.py --config configs/zoo/mqvae_photos_64.yaml --steps 200 \
        --arm lr2e-4 optim.lr=2e-4 --arm lr6e-4 optim.lr=6e-4 \
        --common 'data.root=[../shared/photos,../shared/photos-extra]' --runs runs/zoo-sweep \
        --out experiments/results/zoo_photos_sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
VALIDATION = ("val/rec_loss", "val/psnr", "val/codebook_usage")


def validation_curves(run_dir: Path, started: float) -> dict:
    """tag → {step: value} of the arm's validations, and "seconds" → {step: wall seconds since `started`}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = run_dir / "logs"
    if not logs.is_dir():
        return {}
    events = EventAccumulator(str(logs), size_guidance={"scalars": 0}).Reload()
    tags = [tag for tag in VALIDATION if tag in events.Tags()["scalars"]]
    curves = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in tags}
    if tags:
        curves["seconds"] = {e.step: round(e.wall_time - started) for e in events.Scalars(tags[0])}
    return curves


def stop_when_done(process: subprocess.Popen, run_dir: Path, started: float, steps: int | None,
                   seconds: float | None) -> bool:
    """Whether the arm is over; one that reached its step or time gets SIGTERM (and writes last.ckpt)."""
    if process.poll() is not None:
        return True
    validated = validation_curves(run_dir, started).get("val/rec_loss", {})
    if (steps is not None and any(step + 1 >= steps for step in validated)) or (  # logged at step - 1
            seconds is not None and time.time() - started >= seconds):
        process.send_signal(signal.SIGTERM)  # the training process only, never its data-loading workers
        process.wait()
        return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--arm", nargs="+", action="append", required=True, metavar=("NAME", "OVERRIDE"),
                        help="an arm: its name, then its overrides (key=value ...)")
    parser.add_argument("--common", nargs="*", default=[], metavar="OVERRIDE", help="overrides of every arm")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="stop each arm after its validation at this step")
    budget.add_argument("--seconds", type=float, help="stop each arm after this many seconds of wall time")
    parser.add_argument("--one-at-a-time", action="store_true", help="run the arms one after the other")
    parser.add_argument("--runs", type=Path, required=True, help="the arms' run folders go here")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    started, waiting, running, finished = time.time(), list(args.arm), {}, {}
    while waiting or running:
        while waiting and not (args.one_at_a_time and running):
            name, *overrides = waiting.pop(0)
            command = [sys.executable, "-m", "mvq.cli", "train", str(args.config), *args.common, *overrides,
                       "trainer.enable_progress_bar=false", "--run-dir", str(args.runs / name)]
            log = open(args.runs.parent / f"{args.runs.name}-{name}.log", "w") if args.runs.parent.is_dir() else None
            running[name] = (subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=log, stderr=subprocess.STDOUT),
                             command, time.time())
        time.sleep(10)
        for name, (process, command, start) in list(running.items()):
            if stop_when_done(process, REPOSITORY / args.runs / name, start, args.steps, args.seconds):
                del running[name]
                finished[name] = {"command": "mvq " + " ".join(command[3:]), "wall_seconds": round(time.time() - start),
                                  "exit_code": process.returncode,
                                  "validation": validation_curves(REPOSITORY / args.runs / name, start)}
    import torch

    record = {"config": str(args.config), "steps": args.steps, "seconds": args.seconds,
              "one_at_a_time": args.one_at_a_time, "threads_per_arm": 1, "arms": finished,
              "wall_seconds": round(time.time() - started), "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "command": " ".join(["python", "experiments/zoo/sweep.py", *map(shlex.quote, sys.argv[1:])])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({name: arm["validation"] for name, arm in finished.items()}, indent=1))


if __name__ == "__main__":
    main()
