"""Sampling time against the number of tokens generated: one Stackformer stopping after k of its K tokens.

A Stackformer trained on tokens in rank order (`mvq tokenize --order rank`) gives a whole image at any
budget k ≤ K, so fewer tokens should cost less. This times `generate(num_tokens=k)` (KV cache on) for
k = K/8, K/4, K/2, K, the arms interleaved round by round, and prints per-image seconds for each k and
their ratio to k = K. Random weights: time does not depend on what was learnt.
    python benchmarks/bench_sampling_vs_k.py [--repeats R] [--batch B]
"""

from __future__ import annotations

import argparse

import torch

from harness import emit, environment, measure, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    from mvq.models.stackformer import Stackformer, StackformerConfig

    torch.manual_seed(0)
    config = StackformerConfig(codebook_size=1024, grid_size=16, num_tokens=64, num_classes=10, code_layers=4,
                               position_layers=4, dim=256, heads=8, token_order="rank")
    model = Stackformer(config).eval()
    emit(environment(model="stackformer 4+4 layers, width 256, K 64 of 256 cells", batch=args.batch))
    budgets = [config.num_tokens // 8, config.num_tokens // 4, config.num_tokens // 2, config.num_tokens]
    labels = list(range(args.batch))
    runs: dict[int, list] = {k: [] for k in budgets}
    for k in budgets:  # warm-up
        model.generate(args.batch, labels=[c % 10 for c in labels], num_tokens=k)
    for _ in range(args.repeats):
        for k in budgets:
            runs[k].append(measure(lambda: model.generate(args.batch, labels=[c % 10 for c in labels],  # noqa: B023
                                                          num_tokens=k)))
    full = summary(runs[config.num_tokens], 1 / args.batch)["median"]
    for k in budgets:
        per_image = summary(runs[k], 1 / args.batch)
        emit({"bench": "sampling_vs_k", "num_tokens": k, "of": config.num_tokens, "seconds_per_image": per_image,
              "ratio_to_full_k": per_image["median"] / full})


if __name__ == "__main__":
    main()
