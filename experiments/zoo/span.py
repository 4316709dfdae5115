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
import signal
import subprocess
import sys
import time
from pathlib import Path

from mvq.training.kept_state import LAST, keep_run, require_committable, restore_run, trained_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the run folder to train in (ignored by git)")
    parser.add_argument("--keep", type=Path, required=True, help="the repository's copy (zoo/training/NAME)")
    parser.add_argument("--seconds", type=float, required=True, help="stop the span after this long")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a core stays free)")
    parser.add_argument("--until-step", type=int, default=None,
                        help="end the span once last.ckpt has reached this optimizer step")
    args = parser.parse_args()

    if not (args.run / LAST).is_file() and not (args.keep / LAST).is_file():
        sys.exit(f"span: neither {args.run} nor {args.keep} holds {LAST}: start the run with `mvq train CONFIG "
                 f"--run-dir {args.run}` first")
    require_committable(args.keep)
    if restore_run(args.run, args.keep):
        print(f"span: {args.run} from {args.keep} (step {trained_steps(args.keep)})", flush=True)
    print(f"span: resuming {args.run} at step {trained_steps(args.run)} for {args.seconds:.0f} s", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mvq.cli", "train", "--resume", str(args.run),
                                "trainer.enable_progress_bar=false"], env=env)
    deadline = time.time() + args.seconds
    while process.poll() is None and time.time() < deadline:
        time.sleep(5)
        if args.until_step is not None and trained_steps(args.run) >= args.until_step:
            break
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # the training process only: it writes last.ckpt, then exits
    process.wait()
    keep_run(args.run, args.keep)
    print(f"span: ended at step {trained_steps(args.run)}; {args.keep} holds it (commit it to keep it)", flush=True)


if __name__ == "__main__":
    main()
