"""Where the time of a cached sampling step goes (paper size, batch 1), by torch.profiler.

Every operator's own time is assigned to one part of the step by what the operator is and the
Python code it was called from:
  weights (matmul)   linear layers and heads: the part bound by reading the weights
  attention          scaled_dot_product_attention over the cached keys and values
  cache writes       copying the new keys and values into the cache
  sampling filters   temperature, top-k, top-p and inverse-CDF sampling of codes and positions
  position masks     forbidding used / out-of-order positions, bookkeeping of the sampling loop
  other kernels      layer norms, GELU, embeddings, residual adds
Python overhead is the step's unprofiled wall time minus the time spent inside operators.
    python benchmarks/profile_generation.py [--steps N] [--threads T] [--top N]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from bench_generation import PAPER, with_steps
from harness import emit, environment, measure
from mvq.models.stackformer import Stackformer, StackformerConfig

MATMUL = {"aten::addmm", "aten::mm", "aten::bmm", "aten::linear", "aten::matmul", "aten::addmv", "aten::mv"}


def part_of(name: str, stack: list[str]) -> str:
    frames = " ".join(stack)
    if name in MATMUL:
        return "weights (matmul)"
    if "scaled_dot_product" in name:
        return "attention"
    if "write" in frames and "transformer.py" in frames:
        return "cache writes"
    if "sample_from_logits" in frames or "filter_probabilities" in frames:
        return "sampling filters"
    if "transformer.py" in frames or "code_logits" in frames or "position_logits" in frames:
        return "other kernels"
    return "position masks"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=32, help="decoded steps in the profiled run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="operators listed by own time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    emit(environment())
    model = with_steps(Stackformer(StackformerConfig(**PAPER)).eval(), args.steps)
    run = lambda: model.generate(1, labels=[0])  # noqa: E731
    run()  # warm-up
    unprofiled = min(measure(run).wall for _ in range(3)) / args.steps
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        run()
    parts: dict[str, float] = defaultdict(float)
    operators: dict[str, float] = defaultdict(float)
    calls = 0
    for event in prof.events():
        own = event.self_cpu_time_total / 1e6 / args.steps  # seconds per step
        parts[part_of(event.name, event.stack or [])] += own
        operators[event.name] += own
        calls += 1
    inside = sum(parts.values())
    emit({"bench": "generation_step_profile", "size": "paper", "batch": 1, "steps": args.steps,
          "ms_per_step_unprofiled": unprofiled * 1e3,
          "parts_ms_per_step": {name: seconds * 1e3 for name, seconds in sorted(parts.items(), key=lambda i: -i[1])},
          "python_overhead_ms_per_step": (unprofiled - inside) * 1e3,
          "operator_calls_per_step": calls / args.steps,
          "top_operators_ms_per_step": {name: seconds * 1e3 for name, seconds in
                                        sorted(operators.items(), key=lambda i: -i[1])[:args.top]}})


if __name__ == "__main__":
    main()
