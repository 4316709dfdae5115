"""Generation at every token budget from one any-K Stackformer, against Stackformers trained for one budget.

Arms, each a class-conditional Stackformer trained from `--stackformer-config` for the same `--steps`:
  any-k        on the any-K tokenizer's tokens in rank order (`mvq tokenize --order rank`, all N cells):
               one model, sampled at every budget K with `mvq sample --num-tokens K`.
  budget-kK    (`--per-budget K ...`) on the same tokenizer's tokens at budget K (`--keep K`, the paper's
               raster order): one model per budget, the same tokenizer; isolates what one model for every
               K costs the Stackformer.
  fixed-kK     (`--fixed-tokenizer DIR`) on a tokenizer trained at one K, at its K: the paper's pipeline.
Each sample set: `--num-samples` class-balanced samples (seed 0, guidance 1), their FID against
`--fid-reference` (`mvq eval stats` of the test images) and their class consistency by a classifier
trained on the training images (its own test accuracy reported beside it). Token stores, runs and
samples go to RUNS; a rerun continues what was stopped (tokenizing, training and sampling resume).
`--seconds S` stops the study after S seconds (a training in progress saves its state in RUNS and
resumes there; no new step starts); `--keep DIR` (a folder of the repository) holds each sample set's
scores and the wall times, so that committing DIR carries what was measured to a fresh clone: a kept
score is not measured again, and an arm whose every score is kept is not trained again. (A
Stackformer's training state, its weights and their Adam moments, is about three times its weights, 45 MB
for the zoo's config: too large to commit, so one trains within a session.)
Writes RESULTS/generation_vs_k_NAME.json (numbers, commands, wall times) and a figure of FID and
class consistency against K. Settings fixed before any result was seen.

    python experiments/any_k/rate_distortion.py --config configs/zoo/mqvae_fashion_mnist_32.yaml \
        --name fashion-mnist-32 --steps 1000 --runs runs/rate-distortion-fashion-mnist --stage train \
        --arms any-k fixed-k16 data.root=DATA   # the any-K tokenizer and one trained at K = 16: two of its arms
    mvq export runs/rate-distortion-fashion-mnist/any-k runs/generation-vs-k/any-k-tokenizer --checkpoint last
    mvq export runs/rate-distortion-fashion-mnist/fixed-k16 runs/generation-vs-k/fixed-k16-tokenizer --checkpoint last
    mvq eval stats --data configs/zoo/mqvae_fashion_mnist_32.yaml --split val --n 2000 \
        --out runs/generation-vs-k/test_stats_2000.npz data.root=DATA data.max_val_images=null
    python experiments/any_k/generation_vs_k.py --name fashion-mnist-32 --runs runs/generation-vs-k \
        --any-k-tokenizer runs/generation-vs-k/any-k-tokenizer \
        --fixed-tokenizer runs/generation-vs-k/fixed-k16-tokenizer \
        --stackformer-config configs/zoo/stackformer_fashion_mnist_32.yaml \
        --data configs/zoo/mqvae_fashion_mnist_32.yaml --fid-reference runs/generation-vs-k/test_stats_2000.npz \
        --steps 1500 --per-budget 16 --keep experiments/any_k/training/generation-vs-k data.root=DATA
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "zoo"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rate_distortion import train_arm  # noqa: E402
from release import REPOSITORY, fid, mvq_command, read_samples, reference_classifier  # noqa: E402

from mvq.training.kept_state import trained_steps  # noqa: E402


def tokens(tokenizer: Path, data: str, out: Path, split: str, extra: list[str], overrides: list[str]) -> Path:
    """A token store of one split (`mvq tokenize` continues a partial store and leaves a finished one as it is)."""
    mvq_command("tokenize", "--vae", str(tokenizer), "--data", data, "--split", split, "--out", str(out),
                "--num-workers", "0", *extra, *overrides)
    return out


class Scorer:
    """FID against the reference statistics and class consistency by the reference classifier (trained once,
    when first needed)."""

    def __init__(self, data_config, fid_reference: Path):
        self.data_config, self.fid_reference = data_config, fid_reference
        self.classifier, self.classifier_accuracy = None, None

    def __call__(self, samples: Path, num_classes: int) -> dict:
        from mvq.demo.classifier import predict

        if self.classifier is None:
            self.classifier, self.classifier_accuracy = reference_classifier(self.data_config.data, num_classes)
        images, labels = read_samples(samples)
        return {"fid": fid(samples, self.fid_reference, samples.parent / "fid.json"),
                "class_consistency": float((predict(self.classifier, images) == labels).float().mean()),
                "classifier_test_accuracy": self.classifier_accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="names the results file")
    parser.add_argument("--runs", type=Path, required=True, help="token stores, runs and samples go here")
    parser.add_argument("--any-k-tokenizer", type=Path, required=True, help="an exported any-K MQ-VAE")
    parser.add_argument("--fixed-tokenizer", type=Path, help="an exported MQ-VAE trained at one K")
    parser.add_argument("--per-budget", type=int, nargs="*", default=[], help="budgets K that get a Stackformer "
                        "of their own on the any-K tokenizer's tokens")
    parser.add_argument("--budgets", type=int, nargs="+", help="the any-K Stackformer is sampled at these K "
                        "(default: N/16, N/8, N/4, N/2, N)")
    parser.add_argument("--stackformer-config", required=True)
    parser.add_argument("--data", required=True, help="the tokenizers' data config")
    parser.add_argument("--fid-reference", type=Path, required=True, help="Inception statistics of the test images")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--sample-batch-size", type=int, default=100)
    parser.add_argument("--keep", type=Path, default=None, help="the repository's copy of each sample set's scores "
                        "and of the wall times (commit it to continue on another clone)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (resumable): a training "
                        "is stopped with its state saved, no new step starts after the deadline")
    parser.add_argument("--results", type=Path, default=REPOSITORY / "experiments" / "results")
    parser.add_argument("overrides", nargs="*", help="data.KEY=VALUE changes of the --data config (data.root=...)")
    args = parser.parse_args()
    if not args.fid_reference.is_file():
        parser.error(f"{args.fid_reference} does not exist: write it with `mvq eval stats --split val`")

    from mvq.models.stackformer import Stackformer
    from mvq.models.tokenizer import load_tokenizer
    from mvq.training.config import load_training_config
    from mvq.training.run import export

    started = time.time()
    deadline = started + (args.seconds if args.seconds is not None else float("inf"))
    state = args.keep or args.runs  # wall times and scores live here
    (state / "scores").mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    timing_file = state / "wall_seconds.json"  # summed over every invocation: a stopped study continues
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}

    def spent(what: str, since: float) -> None:
        timing[what] = round(timing.get(what, 0) + time.time() - since)
        timing_file.write_text(json.dumps(timing, indent=1) + "\n")

    again = "run the same command again to continue" + (f" (the scores kept in {args.keep} carry to any clone "
                                                         "once committed)" if args.keep is not None else "")

    def in_time(what: str) -> None:
        if time.time() >= deadline:
            raise SystemExit(f"generation-vs-k: stopped at --seconds before {what}; {again}")

    n = load_tokenizer(args.any_k_tokenizer).config.num_cells
    budgets = args.budgets or [n // 16, n // 8, n // 4, n // 2, n]
    # arm → (tokenizer, tokenize options, the budgets it is sampled at)
    table = {"any-k": (args.any_k_tokenizer, ["--order", "rank"], budgets)}
    table.update({f"budget-k{k}": (args.any_k_tokenizer, ["--keep", str(k)], [k]) for k in args.per_budget})
    if args.fixed_tokenizer:
        k = load_tokenizer(args.fixed_tokenizer).config.num_tokens
        table[f"fixed-k{k}"] = (args.fixed_tokenizer, [], [k])

    _, data_config = load_training_config(args.data, args.overrides)
    score = Scorer(data_config, args.fid_reference)
    results = {}
    for name, (tokenizer, options, ks) in table.items():
        scored = {k: state / "scores" / f"{name}-at-k{k}.json" for k in ks}
        if all(path.is_file() for path in scored.values()):  # this arm is done (maybe on another clone)
            results[name] = {str(k): json.loads(path.read_text()) for k, path in scored.items()}
            continue
        run = args.runs / name
        in_time(f"{name}'s token stores")
        start = time.time()
        stores = [tokens(tokenizer, args.data, args.runs / "tokens" / f"{name}-{split}", split, options, args.overrides)
                  for split in ("train", "val")]
        spent(f"{name} tokenize", start)
        done = train_arm(run, args.stackformer_config, [f"vae={tokenizer}", f"data.tokens={stores[0]}",
                                                        f"data.val_tokens={stores[1]}"],
                         args.steps, args.runs / f"{name}.log", timing, timing_file, deadline)
        if not done:
            raise SystemExit(f"generation-vs-k: training stopped in {name} at step {trained_steps(run)}; run the "
                             f"same command again to continue it from {run}")
        model = export(run, args.runs / "export" / name, which="last", overwrite=True)
        num_classes = Stackformer.from_pretrained(model).config.num_classes
        results[name] = {}
        for k in ks:
            if not scored[k].is_file():
                in_time(f"sampling {name} at K={k}")
                start, out = time.time(), args.runs / "samples" / f"{name}-at-k{k}"
                if not (out / "samples.npz").is_file():  # written when complete; an unfinished folder resumes
                    mvq_command("sample", "--stackformer", str(model), "--vae", str(tokenizer), "--n",
                                str(args.num_samples), "--classes-balanced", "--seed", "0", "--batch-size",
                                str(args.sample_batch_size), "--no-png", "--num-tokens", str(k), "--out", str(out))
                scored[k].write_text(json.dumps(score(out / "samples.npz", num_classes), indent=1) + "\n")
                spent(f"{name} sample and score at K={k}", start)
            results[name][str(k)] = json.loads(scored[k].read_text())
            print(f"{name} K={k}: {json.dumps(results[name][str(k)])}", flush=True)

    accuracies = {row.pop("classifier_test_accuracy") for by_k in results.values() for row in by_k.values()}
    record = {
        "what": "class-conditional generation at every token budget K: one any-K Stackformer (rank-order tokens, "
                "stopped after K) against Stackformers trained for one budget",
        "num_cells": n, "steps_per_stackformer": args.steps, "num_samples": args.num_samples,
        "arms": {name: {"tokenizer": str(tok), "tokenize_options": opts} for name, (tok, opts, _) in table.items()},
        "results": results, "classifier_test_accuracy": sorted(accuracies), "wall_seconds": timing,
        "command": " ".join(["python", "experiments/any_k/generation_vs_k.py", *map(shlex.quote, sys.argv[1:])]),
        "this_invocation_wall_seconds": round(time.time() - started),
    }
    out = args.results / f"generation_vs_k_{args.name}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    figure(record, args.results / f"generation_vs_k_{args.name}.png")
    print(f"wrote {out}")


def figure(record: dict, path: Path) -> None:
    """FID and class consistency against K: the any-K Stackformer's curve, each one-budget model a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, label in ((axes[0], "fid", "FID (lower is better)"),
                                (axes[1], "class_consistency", "class consistency (higher is better)")):
        for name, by_k in record["results"].items():
            ks = sorted(int(k) for k in by_k)
            style = dict(color="black", marker="o", linewidth=2) if name == "any-k" else dict(marker="*", markersize=12)
            axis.plot(ks, [by_k[str(k)][metric] for k in ks], label=name, **style)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("tokens per image, K")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{record['num_samples']} samples per point; {record['steps_per_stackformer']} steps per Stackformer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
