"""Rate–distortion of one any-K MQ-VAE against fixed-K MQ-VAEs: reconstruction quality at every budget K.

Arms, all from one config with the same steps, batch, learning rate and seed (the same compute each):
  fixed-K   `model.keep_ratio = K/N` for K = N/16, N/8, N/4, N/2: the paper's training, one model per K;
  any-K     `model.keep_ratio = 1` with `model.train_keep_min = 1/16` (each batch keeps a K drawn uniformly
            from [N/16, N]; each image, with `--any-k-per image`): one model for every budget.
  any-K random  the same with `model.mask_choice = random`: cells kept at random instead of by the learned
            score (the paper's Table 6 ablation, asked at every K).
  any-K per image / full pass  the same with a K drawn for every image of a batch (`model.train_keep_per =
            image`), or with the loss at the full K added in every step (`model.train_full_keep_pass`):
            how to train for every K, each judged against any-K per K.
  VQGAN     with `--vqgan-config` (repeatable): a VQGAN whose grid has as many cells as one of the budgets (every cell a
            token), trained from its own config with the same steps and data overrides: the baseline at
            equal token count. Trained last, measured at its own count.
Each arm is `mvq train CONFIG --run-dir RUNS/ARM model... trainer.max_steps=STEPS`, run one after the
other and resumed where a run stopped (`mvq train --resume`), so the study continues across sessions.
`--seconds S` stops the training after S seconds (the arm in progress saves its state and resumes
later); `--keep DIR` (a folder of the repository) holds what each arm needs to continue (as
experiments/zoo/span.py keeps a zoo run: config, last.ckpt, logs) and the wall times, refreshed
whenever an arm's training ends or stops, so that committing DIR carries the study to a fresh clone:
an arm missing from RUNS, or behind its kept copy, starts from DIR (with --keep the wall times are
read from and written to DIR only).
Then every arm's last checkpoint is measured at every K on the first `--num-images` evenly spaced
validation images: PSNR, SSIM and LPIPS-VGG on 8-bit images (as `mvq eval recon` measures them), and
rFID where it decides the comparison (a fixed-K arm at its own K, the any-K arms at each of those K);
the originals' Inception statistics are computed once and shared. Adaptive against random (per K) and
any-K against the VQGAN (at its count) are judged on the paired per-image LPIPS difference (mean and
standard error over the same images; a difference beyond 2 standard errors decides). Writes RESULTS/rate_distortion_NAME.json
(every number, the commands, each arm's training wall time) and a figure of LPIPS and PSNR against K.
Settings fixed before any result was seen.

    python experiments/any_k/rate_distortion.py --config configs/zoo/mqvae_fashion_mnist_32.yaml \
        --name fashion-mnist-32 --steps 1000 --runs ../zoo-state/rate-distortion \
        --vqgan-config experiments/any_k/vqgan_fashion_mnist_32_f8.yaml data.root=DATA
    (--stage train | evaluate | all; default all; `--arms A B ...` after the overrides: only those arms;
    another seed: `run.seed=1` with its own --runs and --name)
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from mvq.training.kept_state import keep_run, require_committable, restore_run, trained_steps

REPOSITORY = Path(__file__).resolve().parents[2]
BUDGET_FRACTIONS = (16, 8, 4, 2)   # fixed-K arms at K = N/16, N/8, N/4, N/2
ANY_K_MIN = 1 / 16
CHUNK = 100
STOPPED_EXIT = 143  # `mvq train` stopped by SIGTERM, its state saved in last.ckpt


def arms(num_cells: int, any_k_per: str = "batch") -> dict[str, list[str]]:
    """Arm name → its model overrides. `any_k_per` is how the any-K arms draw K (per batch or per image);
    drawn per image, the any-k-per-image arm would repeat any-k and is left out."""
    table = {f"fixed-k{num_cells // d}": [f"model.keep_ratio={1 / d}"] for d in BUDGET_FRACTIONS}
    per_image = ["model.train_keep_per=image"]
    table["any-k"] = ["model.keep_ratio=1.0", f"model.train_keep_min={ANY_K_MIN}",
                      *(per_image if any_k_per == "image" else [])]
    table["any-k-random"] = [*table["any-k"], "model.mask_choice=random"]
    if any_k_per == "batch":
        table["any-k-per-image"] = [*table["any-k"], *per_image]
    table["any-k-full-pass"] = [*table["any-k"], "model.train_full_keep_pass=true"]
    return table


def is_any_k(arm: str) -> bool:
    return arm.startswith("any-k")


def is_vqgan(arm: str) -> bool:
    return arm.startswith("vqgan")


def paired_lpips(ours: "torch.Tensor", other: "torch.Tensor", better: str, worse: str) -> dict:
    """The per-image LPIPS difference ours − other (mean, standard error), its verdict named `better` or `worse`."""
    from mvq.evaluation.paired import paired_difference

    paired = paired_difference(ours, other, higher_is_better=False)
    return {"lpips_difference": paired["difference"], "standard_error": paired["standard_error"],
            "verdict": {"better": better, "worse": worse}.get(paired["verdict"], paired["verdict"])}


def train_arm(run: Path, config: str, overrides: list[str], steps: int, log: Path, timing: dict, timing_file: Path,
              deadline: float = float("inf")) -> bool:
    """Train (or continue) one arm up to `steps`, adding the wall seconds spent to `timing` (also when stopped);
    stopped at `deadline` (time.time()) or by SIGTERM, with its state saved. True when the arm has all its steps."""
    if trained_steps(run) >= steps:
        return True
    start = time.time()
    if start >= deadline:
        return False
    mvq = [sys.executable, "-m", "mvq.cli"]  # this interpreter's mvq, on PATH or not
    if (run / "checkpoints" / "last.ckpt").is_file():  # the overrides again: paths resolve on this clone
        command = [*mvq, "train", "--resume", str(run), *overrides]
    else:
        command = [*mvq, "train", config, "--run-dir", str(run), *overrides, f"trainer.max_steps={steps}",
                   "run.image_every_n_steps=0"]
    print("training: " + " ".join(map(shlex.quote, command)), flush=True)
    stopped = False
    with open(log, "a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

        def stop(*_) -> None:  # as SIGTERM stops `mvq train`: its state saved, resumable
            nonlocal stopped
            stopped = True
            process.terminate()

        previous = signal.signal(signal.SIGTERM, stop)  # SIGTERM to this script stops the arm so too
        try:
            while process.poll() is None:
                if time.time() >= deadline:
                    stop()
                    break
                time.sleep(2)
            returncode = process.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            timing[run.name] = timing.get(run.name, 0.0) + time.time() - start
            timing_file.write_text(json.dumps(timing, indent=1) + "\n")
    if returncode != 0 and not (stopped and returncode == STOPPED_EXIT):
        raise SystemExit(f"{' '.join(command)} ended with exit {returncode} (a stopped span resumes when this "
                         f"command is run again); its log: {log}")
    return trained_steps(run) >= steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the stage-1 config every arm trains with")
    parser.add_argument("--name", required=True, help="names the results file")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--runs", type=Path, required=True, help="one run folder per arm goes here")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--rfid-images", type=int, default=500, help="the first of those measured for rFID")
    parser.add_argument("--stage", choices=["train", "evaluate", "all"], default="all")
    parser.add_argument("--vqgan-config", action="append", default=[], help="adds a VQGAN arm trained from this "
                        "config (its grid's cell count is its token count); repeat it for several")
    parser.add_argument("--any-k-per", choices=["batch", "image"], default="batch",
                        help="the any-K arms draw K per batch (default) or per image (model.train_keep_per)")
    parser.add_argument("--arms", nargs="+", help="train and evaluate only these arms (default: all; a verdict "
                        "needs both arms it compares)")
    parser.add_argument("--results", type=Path, default=REPOSITORY / "experiments" / "results")
    parser.add_argument("--keep", type=Path, default=None,
                        help="the repository's copy of each arm's state (commit it to continue on another clone)")
    parser.add_argument("--seconds", type=float, default=None, help="stop training after this long (resumable)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE changes of the config for every arm (data.root=...)")
    args = parser.parse_args()

    import torch

    from mvq.training.config import load_training_config

    _, config = load_training_config(args.config, args.overrides)
    n = config.model.num_cells
    table = arms(n, args.any_k_per)
    configs = dict.fromkeys(table, args.config)
    for vqgan_config in args.vqgan_config:
        _, vqgan = load_training_config(vqgan_config, args.overrides)
        name = f"vqgan-k{vqgan.model.num_tokens}"
        table[name], configs[name] = [], vqgan_config
    if args.arms:
        unknown = sorted(set(args.arms) - set(table))
        if unknown:
            raise SystemExit(f"unknown arms {', '.join(unknown)}; the arms are {', '.join(table)}")
        table = {name: table[name] for name in table if name in args.arms}
    args.runs.mkdir(parents=True, exist_ok=True)
    timing_file = (args.keep or args.runs) / "wall_seconds.json"
    timing_file.parent.mkdir(parents=True, exist_ok=True)
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    if args.keep is not None:
        require_committable(args.keep / next(iter(table)))
        for name in table:
            if restore_run(args.runs / name, args.keep / name):
                print(f"rate-distortion: {args.runs / name} from {args.keep / name} "
                      f"(step {trained_steps(args.runs / name)})", flush=True)
    if args.stage in ("train", "all"):
        deadline = time.time() + (args.seconds if args.seconds is not None else float("inf"))
        # any-K first: it is the question; then the fixed-K arms from the zoo's budget down.
        fixed = sorted((a for a in table if a.startswith("fixed-k")), key=lambda a: -int(a.removeprefix("fixed-k")))
        order = ["any-k", *fixed, "any-k-random", *(a for a in table if is_vqgan(a)), "any-k-per-image",
                 "any-k-full-pass"]
        for name in [a for a in order if a in table]:
            trained_before = trained_steps(args.runs / name)
            try:
                done = train_arm(args.runs / name, configs[name], [*table[name], *args.overrides], args.steps,
                                 args.runs / f"{name}.log", timing, timing_file, deadline)
            finally:  # what the arm reached is kept, however its training ended
                if args.keep is not None and trained_steps(args.runs / name) > trained_steps(args.keep / name):
                    keep_run(args.runs / name, args.keep / name)
            if not done:
                raise SystemExit(f"rate-distortion: training stopped in {name} at step {trained_steps(args.runs / name)} "
                                 f"(from {trained_before}); run the same command again to continue"
                                 + (f", on any clone once {args.keep} is committed" if args.keep is not None else ""))
    if args.stage == "train":
        return
    missing = [name for name in table if trained_steps(args.runs / name) < args.steps]
    if missing:
        raise SystemExit(f"arms not trained to {args.steps} steps yet: {', '.join(missing)} (run --stage train)")

    from mvq.data.build import dataset_from_path
    from mvq.evaluation import InceptionV3, from_uint8, to_uint8
    from mvq.evaluation.frechet import GaussianAccumulator, frechet_distance
    from mvq.evaluation.image_metrics import psnr, ssim
    from mvq.evaluation.images import evaluation_indices
    from mvq.losses.perceptual import LPIPS
    from mvq.models.tokenizer import load_tokenizer
    from mvq.training.run import export

    torch.set_grad_enabled(False)
    started = time.time()
    data_overrides = [o for o in args.overrides if o.startswith("data.")]
    dataset = dataset_from_path(args.config, "val", config.model.resolution, data_overrides)
    indices = evaluation_indices(len(dataset), min(args.num_images, len(dataset)))
    images = torch.stack([dataset[int(i)]["image"] for i in indices])
    x8 = to_uint8(images)
    lpips, inception = LPIPS().eval(), InceptionV3()

    def features(batch8: torch.Tensor) -> GaussianAccumulator:
        stats = GaussianAccumulator(inception.feature_dim)
        for start in range(0, len(batch8), CHUNK):
            stats.update(inception(batch8[start:start + CHUNK])[0])
        return stats

    reference = features(x8[:args.rfid_images]).mean_and_covariance()
    budgets = [n // d for d in BUDGET_FRACTIONS] + [n]
    results: dict[str, dict] = {}
    lpips_per_image: dict[tuple[str, int], torch.Tensor] = {}
    for name in table:
        model = load_tokenizer(export(args.runs / name, args.runs / "export" / name, overwrite=True)).eval()
        own = model.config.num_tokens
        results[name] = {"trained_k": f"{n // 16}..{n}" if is_any_k(name) else own, "by_k": {}}
        torch.manual_seed(0)  # the random masker draws its cells from torch's generator
        for k in [own] if is_vqgan(name) else budgets:
            if not is_any_k(name) and k > n // 2 and k != own:
                continue  # a fixed-K model is measured at budgets up to N/2 (and its own)
            keep = {} if is_vqgan(name) else {"keep": k}  # a VQGAN keeps every cell
            r8 = torch.cat([to_uint8(model(images[s:s + CHUNK], **keep).reconstruction.float())
                            for s in range(0, len(images), CHUNK)])
            per_image = torch.cat([lpips(from_uint8(x8[s:s + CHUNK]), from_uint8(r8[s:s + CHUNK])).flatten()
                                   for s in range(0, len(images), CHUNK)])
            lpips_per_image[name, k] = per_image
            row = {"psnr": float(psnr(x8, r8).mean()), "ssim": float(ssim(x8, r8).mean()),
                   "lpips_vgg": float(per_image.mean())}
            if (is_any_k(name) and k <= n // 2) or k == own:
                row["rfid"] = frechet_distance(*reference, *features(r8[:args.rfid_images]).mean_and_covariance())
            results[name]["by_k"][str(k)] = row
            print(f"{name} K={k}: {json.dumps(row)}", flush=True)

    verdicts = {}
    for k in [k for k in budgets[:-1] if f"fixed-k{k}" in results and "any-k" in results]:
        fixed, anyk = results[f"fixed-k{k}"]["by_k"][str(k)], results["any-k"]["by_k"][str(k)]
        verdicts[str(k)] = {"lpips_any_over_fixed": anyk["lpips_vgg"] / fixed["lpips_vgg"],
                            "within_10_percent": anyk["lpips_vgg"] <= 1.1 * fixed["lpips_vgg"],
                            "psnr_any_minus_fixed": anyk["psnr"] - fixed["psnr"],
                            "rfid_any_minus_fixed": anyk["rfid"] - fixed["rfid"]}
    adaptive_vs_random = {str(k): paired_lpips(lpips_per_image["any-k", k], lpips_per_image["any-k-random", k],
                                               "adaptive better", "random better")
                          for k in (budgets if "any-k" in table and "any-k-random" in table else [])}
    variants = {name: {str(k): paired_lpips(lpips_per_image[name, k], lpips_per_image["any-k", k],
                                            f"{name} better", "any-k better") for k in budgets}
                for name in ("any-k-per-image", "any-k-full-pass") if name in table and "any-k" in table}
    against_vqgan = {}  # the VQGAN at its token count against the MQ-VAEs (any-K, and fixed-K if one has it)
    for name in (a for a in table if is_vqgan(a)):
        k = results[name]["trained_k"]
        vq = results[name]["by_k"][str(k)]
        against_vqgan[name] = {"k": k}
        for ours in (a for a in ("any-k", f"fixed-k{k}") if a in results and str(k) in results[a]["by_k"]):
            row = results[ours]["by_k"][str(k)]
            against_vqgan[name][ours] = {
                **paired_lpips(lpips_per_image[ours, k], lpips_per_image[name, k], "MQ-VAE better", "VQGAN better"),
                "psnr_minus_vqgan": row["psnr"] - vq["psnr"],
                "rfid_minus_vqgan": row["rfid"] - vq["rfid"] if "rfid" in row else None}
    record = {
        "what": "one any-K MQ-VAE against fixed-K MQ-VAEs of the same compute, measured at every budget K",
        "config": args.config, "overrides": args.overrides, "num_cells": n, "steps_per_arm": args.steps,
        "arms": {name: {"config": configs[name], "overrides": table[name],
                        "train_wall_seconds": round(timing.get(name, 0.0))} for name in table},
        "num_images": len(images), "rfid_images": min(args.rfid_images, len(images)),
        "results": results, "verdicts": verdicts, "adaptive_vs_random": adaptive_vs_random,
        "any_k_against_vqgan": against_vqgan, "any_k_training_variants": variants,
        "command": " ".join(["python", "experiments/any_k/rate_distortion.py", *map(shlex.quote, sys.argv[1:])]),
        "evaluate_wall_seconds": round(time.time() - started), "threads": torch.get_num_threads(),
    }
    out = args.results / f"rate_distortion_{args.name}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    figure(record, args.results / f"rate_distortion_{args.name}.png")
    print(f"wrote {out}")


def figure(record: dict, path: Path) -> None:
    """LPIPS and PSNR against K: the any-K model's curve and each fixed-K model's (a star at its own K)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, label in ((axes[0], "lpips_vgg", "LPIPS-VGG (lower is better)"),
                                (axes[1], "psnr", "PSNR, dB (higher is better)")):
        for name, result in record["results"].items():
            ks = sorted(int(k) for k in result["by_k"])
            values = [result["by_k"][str(k)][metric] for k in ks]
            style = (dict(color="black", marker="o", linewidth=2) if name == "any-k" else
                     dict(color="grey", marker="x", linestyle="--") if name == "any-k-random" else
                     dict(color="red", marker="s", markersize=8, linestyle="none") if is_vqgan(name) else
                     dict(marker=".", alpha=0.7))
            line, = axis.plot(ks, values, label=name, **style)
            if name.startswith("fixed-k"):  # the budget the model was trained at
                own = result["trained_k"]
                axis.plot([own], [result["by_k"][str(own)][metric]], marker="*", markersize=12, color=line.get_color())
        axis.set_xscale("log", base=2)
        axis.set_xlabel("tokens kept, K")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{record['num_cells']} cells; {record['steps_per_arm']} steps per model; "
                 f"{record['num_images']} validation images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
