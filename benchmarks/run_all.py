"""Run every benchmark in this folder, one after the other (`make bench`). Output: JSON lines.

Takes about an hour on a 2-core CPU; each script's docstring says what it measures and how.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ["bench_mqvae.py"],
    ["bench_training.py"],
    ["bench_stackformer.py"],
    ["bench_generation.py"],
    ["bench_sampling_vs_k.py"],
    ["bench_inception.py"],
    ["bench_zoo_photo_steps.py"],
    ["profile_generation.py"],
]

if __name__ == "__main__":
    failed = 0
    for args in BENCHMARKS:
        print(f"# {' '.join(args)}", flush=True)
        failed |= subprocess.call([sys.executable, str(HERE / args[0]), *args[1:]]) != 0
    sys.exit(failed)
