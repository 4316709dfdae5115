"""A short stage-1 run on real photographs with the real LPIPS loss, then its evaluation with real rFID.

Steps, each through the `mvq` command line and timed:
  1. `mvq train configs/stage1/mqvae_photos_64.yaml` on crops of the photos (LPIPS weight 1) for
     `--steps` optimizer steps; the discriminator stays off because the config's disc_start
     (5000) lies beyond the run.
  2. the run's TensorBoard scalars: the first and last logged values of the LPIPS term and the
     other losses (and the mean of the first and last five, since single steps are noisy).
  3. `mvq export` of the last checkpoint, then `mvq eval recon` on the fixed validation crops:
     rFID (FID Inception), LPIPS-VGG, PSNR, SSIM, codebook usage; and LPIPS-AlexNet.
Writes every number, command, wall time and the weights used to one JSON file.
    python experiments/photos_lpips/run.py [--photos DIR] [--steps N] [--run-dir DIR] [--out JSON]
Needs `mvq weights install` (VGG16, AlexNet, FID Inception) first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
CONFIG = Path("configs/stage1/mqvae_photos_64.yaml")
LOGGED = ("train/perceptual_loss", "train/l1_loss", "train/nll_loss", "train/codebook_loss", "train/loss",
          "val/rec_loss", "val/psnr", "val/codebook_usage")


def timed(args: list[str], threads: int | None) -> tuple[str, float]:
    """Run `mvq ARGS` in the repository; returns the command as a user types it and its wall seconds."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mvq.cli", *args], cwd=REPOSITORY, check=True, env=environment)
    return "mvq " + shlex.join(args), time.perf_counter() - start


def weights_used() -> dict:
    """For each network: the file found, its SHA-256 and where it came from."""
    from mvq.storage.network_weights import ALEXNET, INCEPTION, VGG16, find, sha256_of
    from mvq.weights.install import provenance_summary

    used = {}
    for weights in (VGG16, ALEXNET, INCEPTION):
        path = find(weights)
        if path is None:
            raise SystemExit(f"{weights.key}: no weights found; run `mvq weights install` first")
        used[weights.key] = {"file": path.name, "sha256": sha256_of(path), "source": provenance_summary(path)}
    return used


def loss_curves(log_dir: Path) -> dict:
    """First and last logged value (and the means of the first and last five) of each tag in LOGGED."""
    from mvq.demo.report import read_scalars

    series = read_scalars(log_dir)
    curves = {}
    for tag in LOGGED:
        if tag not in series:
            continue
        steps, values = series[tag]
        curves[tag] = {"logged": len(values), "first_step": steps[0], "first": values[0],
                       "last_step": steps[-1], "last": values[-1],
                       "mean_first_5": statistics.fmean(values[:5]), "mean_last_5": statistics.fmean(values[-5:])}
    return curves


def metrics_of(path: Path) -> dict:
    """The metrics of an `mvq eval` results file."""
    return json.loads(path.read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=REPOSITORY.parent / "shared" / "photos",
                        help="photo folder with train/ and val/ (default: ../shared/photos)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default: 300)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/photos_lpips_64"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/photos_lpips_64.json"))
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the mvq commands (default: torch's own choice); on a machine "
                             "that other jobs share, 1 thread per process runs steadier than one per core")
    args = parser.parse_args()
    if not (args.photos / "train").is_dir() or not (args.photos / "val").is_dir():
        raise SystemExit(f"{args.photos}: expected a photo folder with train/ and val/")
    import torch

    from mvq.storage.atomic import atomic_write_json

    run_dir, exported = args.run_dir, args.run_dir / "mqvae"
    weights = weights_used()
    load_before = os.getloadavg()[0]
    commands, seconds = {}, {}
    commands["train"], seconds["train"] = timed(
        ["train", str(CONFIG), f"data.root={args.photos.resolve()}", f"trainer.max_steps={args.steps}",
         "trainer.enable_progress_bar=false", "--run-dir", str(run_dir)], args.threads)
    curves = loss_curves(REPOSITORY / run_dir / "logs")
    commands["export"], seconds["export"] = timed(["export", str(run_dir), str(exported)], args.threads)
    evaluations = {}
    for name, extra in (("vgg", []), ("alex", ["--no-fid"])):
        out = run_dir / f"eval_recon_{name}.json"
        commands[f"eval_recon_{name}"], seconds[f"eval_recon_{name}"] = timed(
            ["eval", "recon", "--vae", str(exported), "--data", str(run_dir / "config.yaml"), "--split", "val",
             "--lpips-net", name, *extra, "--num-workers", "2", "--no-progress", "--out", str(out)], args.threads)
        evaluations[name] = metrics_of(REPOSITORY / out)
    recon = dict(evaluations["vgg"])
    recon["lpips_vgg"] = recon.pop("lpips")
    recon["lpips_alex"] = evaluations["alex"]["lpips"]

    atomic_write_json(REPOSITORY / args.out, {
        "what": "64 px MQ-VAE (mqvae_photos_64.yaml) trained on random crops of 28 photographs with the real "
                "LPIPS(VGG16) loss, evaluated on the 72 fixed validation crops (9 held-out photographs x 8)",
        "steps": args.steps,
        "discriminator": "off: disc_start 5000 lies beyond the run",
        "commands": commands,
        "wall_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "train_seconds_per_step": round(seconds["train"] / args.steps, 3),
        "loss_curves": curves,
        "lpips_term_fell": curves["train/perceptual_loss"]["mean_last_5"]
        < curves["train/perceptual_loss"]["mean_first_5"],
        "reconstruction": recon,
        "rfid_note": f"rFID over N={recon['num_images']} images (2048-d features, so the covariances are rank "
                     "deficient): comparable only with rFID at the same N on the same crops",
        "weights": weights,
        "environment": {"torch": torch.__version__, "threads": args.threads or torch.get_num_threads(),
                        "machine": platform.machine(), "cpus": os.cpu_count(), "load_average_1min_before": load_before,
                        "load_average_1min_after": os.getloadavg()[0]},
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
