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
Writes RESULTS/generation_vs_k_NAME.json (numbers, commands, wall times) and a figure of FID and
class consistency against K. Settings fixed before any result was seen.

    python experiments/any_k/generation_vs_k.py --name fashion-mnist-32 --runs ../zoo-state/generation-vs-k \
        --any-k-tokenizer ../zoo-state/rate-distortion/export/any-k \
        --stackformer-config configs/zoo/stackformer_fashion_mnist_32.yaml \
        --data configs/zoo/mqvae_fashion_mnist_32.yaml --fid-reference STATS.npz \
        --steps 1500 --per-budget 16 data.root=DATA
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "zoo"))
from release import REPOSITORY, fid, mvq_command, read_samples, reference_classifier  # noqa: E402


def tokens(tokenizer: Path, data: str, out: Path, split: str, extra: list[str], overrides: list[str]) -> Path:
    """A token store of one split (`mvq tokenize` continues a partial store and leaves a finished one as it is)."""
    mvq_command("tokenize", "--vae", str(tokenizer), "--data", data, "--split", split, "--out", str(out),
                "--num-workers", "0", *extra, *overrides)
    return out


def train(run: Path, config: str, tokenizer: Path, train_store: Path, val_store: Path, steps: int) -> None:
    """Train (or continue) one Stackformer to `steps` optimizer steps."""
    from mvq.training.checkpoints import read_checkpoint

    last = run / "checkpoints" / "last.ckpt"
    if last.is_file() and int(read_checkpoint(last)["global_step"]) >= steps:
        return
    if last.is_file():
        mvq_command("train", "--resume", str(run))
    else:
        mvq_command("train", config, "--run-dir", str(run), f"vae={tokenizer}", f"data.tokens={train_store}",
                    f"data.val_tokens={val_store}", f"trainer.max_steps={steps}", "run.image_every_n_steps=0")


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
    parser.add_argument("--results", type=Path, default=REPOSITORY / "experiments" / "results")
    parser.add_argument("overrides", nargs="*", help="data.KEY=VALUE changes of the --data config (data.root=...)")
    args = parser.parse_args()
    if not args.fid_reference.is_file():
        parser.error(f"{args.fid_reference} does not exist: write it with `mvq eval stats --split val`")

    from mvq.demo.classifier import predict
    from mvq.models.stackformer import Stackformer
    from mvq.models.tokenizer import load_tokenizer
    from mvq.training.config import load_training_config
    from mvq.training.run import export

    started = time.time()
    timing_file = args.runs / "wall_seconds.json"  # summed over every invocation: a stopped run continues
    wall = json.loads(timing_file.read_text()) if timing_file.is_file() else {}

    def spent(arm: str, what: str, since: float) -> None:
        wall.setdefault(arm, {})[what] = round(wall.get(arm, {}).get(what, 0) + time.time() - since)
        args.runs.mkdir(parents=True, exist_ok=True)
        timing_file.write_text(json.dumps(wall, indent=1) + "\n")

    n = load_tokenizer(args.any_k_tokenizer).config.num_cells
    budgets = args.budgets or [n // 16, n // 8, n // 4, n // 2, n]
    # arm → (tokenizer, tokenize options, the budgets it is sampled at)
    table = {"any-k": (args.any_k_tokenizer, ["--order", "rank"], budgets)}
    table.update({f"budget-k{k}": (args.any_k_tokenizer, ["--keep", str(k)], [k]) for k in args.per_budget})
    if args.fixed_tokenizer:
        k = load_tokenizer(args.fixed_tokenizer).config.num_tokens
        table[f"fixed-k{k}"] = (args.fixed_tokenizer, [], [k])

    _, data_config = load_training_config(args.data, args.overrides)
    results = {}
    for name, (tokenizer, options, ks) in table.items():
        start = time.time()
        stores = [tokens(tokenizer, args.data, args.runs / "tokens" / f"{name}-{split}", split, options, args.overrides)
                  for split in ("train", "val")]
        train(args.runs / name, args.stackformer_config, tokenizer, *stores, args.steps)
        model = export(args.runs / name, args.runs / "export" / name, which="last", overwrite=True)
        spent(name, "tokenize_and_train_seconds", start)
        results[name] = {}
        for k in ks:
            start, out = time.time(), args.runs / "samples" / f"{name}-at-k{k}"
            if not (out / "samples.npz").is_file():  # written when complete; an unfinished folder resumes
                mvq_command("sample", "--stackformer", str(model), "--vae", str(tokenizer), "--n", str(args.num_samples),
                            "--classes-balanced", "--seed", "0", "--batch-size", str(args.sample_batch_size),
                            "--no-png", "--num-tokens", str(k), "--out", str(out))
            scored = out / "fid.json"
            results[name][str(k)] = {"fid": float(json.loads(scored.read_text())["metrics"]["fid"]) if scored.is_file()
                                     else fid(out / "samples.npz", args.fid_reference, scored)}
            spent(name, f"sample_and_fid_seconds_at_k{k}", start)
            print(f"{name} K={k}: {json.dumps(results[name][str(k)])}", flush=True)

    num_classes = Stackformer.from_pretrained(args.runs / "export" / "any-k").config.num_classes
    classifier, classifier_accuracy = reference_classifier(data_config.data, num_classes)
    for name, by_k in results.items():
        for k, row in by_k.items():
            samples, labels = read_samples(args.runs / "samples" / f"{name}-at-k{k}" / "samples.npz")
            row["class_consistency"] = float((predict(classifier, samples) == labels).float().mean())
    record = {
        "what": "class-conditional generation at every token budget K: one any-K Stackformer (rank-order tokens, "
                "stopped after K) against Stackformers trained for one budget",
        "num_cells": n, "steps_per_stackformer": args.steps, "num_samples": args.num_samples,
        "arms": {name: {"tokenizer": str(tok), "tokenize_options": opts} for name, (tok, opts, _) in table.items()},
        "results": results, "classifier_test_accuracy": classifier_accuracy, "wall_seconds": wall,
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
