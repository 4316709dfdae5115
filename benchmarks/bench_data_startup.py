"""What building a training dataset costs before the first step, on a large synthetic image tree.

Writes N tiny JPEGs into 1,000-file class folders under `--root` (ImageNet's layout: a folder per
class), then builds the training dataset of a folder config, each build in a fresh process, alternating
the arms: `walk` (`data.check_images: name`, the default, with no kept listing: one folder walk),
`kept` (the same with the listing an earlier build kept in ROOT/.mvq: one stat per folder) and
`decode` (`check_images: decode`, every file decoded once, the earlier default). Prints JSON lines:
seconds and peak memory of each build, and the seconds extrapolated linearly to ImageNet's 1,281,167
training images.
    python benchmarks/bench_data_startup.py [--files N] [--root DIR] [--repeats R] [--arms walk kept decode]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import emit, environment

IMAGENET_TRAIN = 1_281_167


def make_tree(root: Path, files: int) -> None:
    """N distinct 8×8 JPEGs in folders of 1,000 (kept between runs when complete)."""
    import numpy as np
    from PIL import Image

    marker = root / f".complete-{files}"
    if marker.exists():
        return
    rng = np.random.default_rng(0)
    for i in range(files):
        folder = root / f"c{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:07d}.jpg", quality=90)
    marker.write_text("")


def build_once(root: Path, check: str) -> None:
    """Child process: build the dataset and print its size, seconds and peak memory."""
    from mvq.data import DataConfig, build_dataset

    start = time.perf_counter()
    dataset = build_dataset(DataConfig(dataset="folder", root=str(root), resolution=8, check_images=check), "train")
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": len(dataset), "seconds": seconds, "peak_rss_mib": peak_mib}))


# Each arm: the data.check_images it builds with (the kept listing is prepared or removed per arm).
ARMS = {"walk": "name", "kept": "name", "decode": "decode"}


def build_once_in_child(root: Path, check: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", check, "--root", str(root)],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/mvq-bench-tree"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--child", choices=["name", "decode"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return build_once(args.root, args.child)
    start = time.perf_counter()
    make_tree(args.root, args.files)
    emit(environment(files=args.files, tree_seconds=time.perf_counter() - start))
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for _ in range(args.repeats):
        for arm in results:
            if arm == "walk":
                shutil.rmtree(args.root / ".mvq", ignore_errors=True)  # no kept listing: the folder is walked
            elif not (args.root / ".mvq").is_dir():
                build_once_in_child(args.root, "name")  # keep a listing first
            results[arm].append(build_once_in_child(args.root, ARMS[arm]))
    for arm, runs in results.items():
        seconds = sorted(r["seconds"] for r in runs)[len(runs) // 2]
        emit({"bench": "data_startup", "arm": arm, "check_images": ARMS[arm], "images": runs[0]["images"],
              "seconds_median": seconds, "seconds_runs": [r["seconds"] for r in runs],
              "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
              "seconds_per_million": seconds / runs[0]["images"] * 1e6,
              "imagenet_train_seconds_estimate": seconds / runs[0]["images"] * IMAGENET_TRAIN})


if __name__ == "__main__":
    main()
