"""Stackformer speed, side by side with the authors' `ReverseStackedPositionGPT` in the same run.

Generation (batch 1, class-conditional, top-k 100 / top-p 0.95 for codes, 10 / 0.95 for
positions): mvq's cached sampler (one token per stack per step) against the authors' way of
sampling (both stacks re-run over the whole prefix at every step, used positions forbidden
sample by sample; see reference_models.py).
  size "small" (6 + 6 layers, width 512): both run all K = 256 steps, arms alternated.
  size "paper" (12 + 12 layers, width 1024): mvq runs all 256 steps; the reference's full run
      takes minutes on a CPU, so its time is EXTRAPOLATED: one uncached step is timed at prefix
      lengths 1, 64, 128, 192, 256 and the interpolated costs of all 256 steps are summed. The
      same extrapolation is checked against a full reference run at the small size
      (`extrapolation_check` = measured / extrapolated).
Training step (teacher-forced forward + backward of both losses, batch 8 small / 2 paper).
Both models have the same parameter shapes (fused vs separate q/k/v projections aside).
    python benchmarks/bench_stackformer.py [--sizes small paper] [--repeats N] [--threads T]
Without the reference modules (a user's clone) the script says so and exits.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from harness import emit, environment, interleaved, measure, ratio, summary
from mvq.models.stackformer import Stackformer, StackformerConfig
from reference_models import (interpolated_total, prefix_step_seconds, reference_generate, reference_stackformer,
                              unavailable_reason)

BASE = dict(codebook_size=1024, grid_size=32, num_tokens=256, num_classes=1000, dropout=0.0)
SIZES = {
    "small": dict(code_layers=6, position_layers=6, dim=512, heads=8),
    "paper": dict(code_layers=12, position_layers=12, dim=1024, heads=16),
}
TRAIN_BATCH = {"small": 8, "paper": 2}
PREFIX_LENGTHS = [1, 64, 128, 192, 256]


def generation_arms(ours: Stackformer, theirs: torch.nn.Module, batch: int) -> dict:
    c = ours.config
    labels = torch.arange(batch) % c.num_classes
    return {"mvq": lambda: ours.generate(batch, labels=labels.tolist()),
            "reference": lambda: reference_generate(theirs, labels, c.num_tokens, c.num_classes, c.num_cells)}


def bench_generation_small(ours: Stackformer, theirs: torch.nn.Module, repeats: int) -> None:
    c = ours.config
    samples = interleaved(generation_arms(ours, theirs, 1), repeats)
    extrapolated = interpolated_total(prefix_step_seconds(theirs, 1, PREFIX_LENGTHS, c.num_classes, c.num_cells),
                                      c.num_tokens)
    emit({"bench": "stackformer_generate", "size": "small", "batch": 1, "steps": c.num_tokens,
          "mvq_s_per_image": summary(samples["mvq"]), "reference_s_per_image": summary(samples["reference"]),
          **ratio(samples["reference"], samples["mvq"]),
          "reference_extrapolated_s": extrapolated,
          "extrapolation_check": summary(samples["reference"])["median"] / extrapolated})


def bench_generation_paper(ours: Stackformer, theirs: torch.nn.Module, repeats: int) -> None:
    c = ours.config
    arms = generation_arms(ours, theirs, 1)
    arms["mvq"]()  # warm-up
    mine, extrapolated = [], []
    for _ in range(repeats):  # alternate: one mvq image, then the reference's per-step costs
        mine.append(measure(arms["mvq"]))
        costs = prefix_step_seconds(theirs, 1, PREFIX_LENGTHS, c.num_classes, c.num_cells)
        extrapolated.append(interpolated_total(costs, c.num_tokens))
    rounds = [e / m.wall for e, m in zip(extrapolated, mine)]
    emit({"bench": "stackformer_generate", "size": "paper", "batch": 1, "steps": c.num_tokens,
          "mvq_s_per_image": summary(mine), "reference_s_per_image_extrapolated": sorted(extrapolated),
          "ratio_extrapolated": statistics.median(extrapolated) / summary(mine)["median"],
          "ratio_rounds_min": min(rounds), "ratio_rounds_max": max(rounds)})


def bench_training(name: str, ours: Stackformer, theirs: torch.nn.Module, repeats: int) -> None:
    c, batch = ours.config, TRAIN_BATCH[name]
    codes = torch.randint(0, c.codebook_size, (batch, c.num_tokens))
    positions = torch.rand(batch, c.num_cells).argsort(dim=1)[:, :c.num_tokens].sort(dim=1).values
    labels = torch.randint(0, c.num_classes, (batch,))
    their_tokens = torch.cat([labels[:, None], codes + c.num_classes], dim=1)
    their_positions = torch.cat([torch.full((batch, 1), c.num_cells), positions], dim=1)

    def mvq_step():
        ours.train()
        ours(codes, positions, labels).loss.backward()
        ours.zero_grad(set_to_none=True)

    def reference_step():
        theirs.train()
        losses = theirs(their_tokens, their_positions, their_tokens[:, 1:], their_positions[:, 1:])
        (losses["value_loss"] + losses["position_loss"]).backward()
        theirs.zero_grad(set_to_none=True)

    samples = interleaved({"mvq": mvq_step, "reference": reference_step}, repeats)
    ours.eval(), theirs.eval()
    emit({"bench": "stackformer_train_step", "size": name, "batch": batch, "seq_len": c.num_tokens,
          "mvq_s": summary(samples["mvq"]), "reference_s": summary(samples["reference"]),
          "mvq_tokens_per_s": batch * c.num_tokens / summary(samples["mvq"])["median"],
          **ratio(samples["reference"], samples["mvq"])})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["small", "paper"], choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per arm")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    skipped = unavailable_reason()
    emit(environment(reference=skipped or "side by side in this run"))
    if skipped:
        return
    for name in args.sizes:
        ours = Stackformer(StackformerConfig(**BASE, **SIZES[name])).eval()
        theirs = reference_stackformer(ours.config)
        if sum(p.numel() for p in ours.parameters()) != sum(p.numel() for p in theirs.parameters()):
            raise SystemExit(f"{name}: the reference model's parameter count differs from ours; not comparable")
        if name == "small":
            bench_generation_small(ours, theirs, args.repeats)
        else:
            bench_generation_paper(ours, theirs, args.repeats)
        bench_training(name, ours, theirs, args.repeats)


if __name__ == "__main__":
    main()
