"""Run every benchmark in this folder, one after the other (`make bench`). Output: JSON lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ["bench_mqvae.py"],
    ["bench_training.py"],
    ["bench_stackformer.py"],
]

if __name__ == "__main__":
    failed = 0
    for args in BENCHMARKS:
        print(f"# {' '.join(args)}", flush=True)
        failed |= subprocess.call([sys.executable, str(HERE / args[0]), *args[1:]]) != 0
    sys.exit(failed)
