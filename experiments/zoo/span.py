"""One span of a long zoo run: continue it from what the repository keeps, stop it in time, keep it again.

A span is one `mvq train --resume` process that ends before the machine does. The repository keeps
what the run needs to continue (KEEP = zoo/training/NAME: config.yaml, checkpoints/last.ckpt, logs/);
the span trains in RUN (ignored by git), and at its end copies those three back into KEEP, so that
committing KEEP is all a later span, on any clone, needs to continue exactly.

    python experiments/zoo/span.py --run runs/zoo/photos-64 --keep zoo/training/photos-64 --seconds 7200

`--until-step N` ends the span sooner, at the first last.ckpt of step N or later (last.ckpt is
written every `run.checkpoint_every_n_steps`, so the run stops a few steps past such a checkpoint):
to stop a run at a step count without changing its lr schedule, which `trainer.max_steps` sets.

RUN is filled from KEEP when it has no last.ckpt of its own (a fresh clone); a RUN that is further
along than KEEP is never overwritten. The stop is SIGTERM to the training process alone (never its
data-loading workers), which finishes the batch in progress and writes last.ckpt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

LAST = Path("checkpoints") / "last.ckpt"


def global_step(run: Path) -> int:
    """The optimizer steps a run folder's last.ckpt has taken (-1 without one)."""
    import torch

    if not (run / LAST).is_file():
        return -1
    return int(torch.load(run / LAST, map_location="cpu", weights_only=True)["global_step"])


def copy_run(source: Path, target: Path) -> None:
    """config.yaml, checkpoints/last.ckpt and every logs/ file of SOURCE into TARGET (replacing those)."""
    (target / "checkpoints").mkdir(parents=True, exist_ok=True)
    (target / "logs").mkdir(exist_ok=True)
    for name in ("config.yaml", str(LAST)):
        shutil.copy2(source / name, target / name)
    for log in (source / "logs").iterdir():
        if log.is_file():
            shutil.copy2(log, target / "logs" / log.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the run folder to train in (ignored by git)")
    parser.add_argument("--keep", type=Path, required=True, help="the repository's copy (zoo/training/NAME)")
    parser.add_argument("--seconds", type=float, required=True, help="stop the span after this long")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a core stays free)")
    parser.add_argument("--until-step", type=int, default=None,
                        help="end the span once last.ckpt has reached this optimizer step")
    args = parser.parse_args()

    kept, ran = global_step(args.keep), global_step(args.run)
    if kept < 0 and ran < 0:
        sys.exit(f"span: neither {args.run} nor {args.keep} holds {LAST}: start the run with `mvq train CONFIG "
                 f"--run-dir {args.run}` first")
    if ran < kept:
        print(f"span: {args.run} from {args.keep} (step {kept})", flush=True)
        copy_run(args.keep, args.run)
    print(f"span: resuming {args.run} at step {max(ran, kept)} for {args.seconds:.0f} s", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mvq.cli", "train", "--resume", str(args.run),
                                "trainer.enable_progress_bar=false"], env=env)
    deadline = time.time() + args.seconds
    while process.poll() is None and time.time() < deadline:
        time.sleep(5)
        if args.until_step is not None and global_step(args.run) >= args.until_step:
            break
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # the training process only: it writes last.ckpt, then exits
    process.wait()
    copy_run(args.run, args.keep)
    print(f"span: ended at step {global_step(args.run)}; {args.keep} holds it (commit it to keep it)", flush=True)


if __name__ == "__main__":
    main()
