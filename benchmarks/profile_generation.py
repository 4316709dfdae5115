"""Where the time of a cached sampling step goes (paper size, batch 1), by torch.profiler.

Every operator's own time is assigned to one part of the step by what the operator is and which
library function it ran in (those functions are wrapped in profiler ranges for the profiled run):
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
import contextlib
import functools
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench_generation import PAPER, with_steps
from harness import emit, environment, measure
from mvq.models import sampling
from mvq.models.stackformer import Stackformer, StackformerConfig
from mvq.nn.transformer import KVCache

MATMUL = {"aten::addmm", "aten::mm", "aten::bmm", "aten::linear", "aten::matmul", "aten::addmv", "aten::mv"}
# Library functions whose operators are labelled during the profiled run (module, attribute, label).
LABELLED = [(sampling, "sample_from_logits", "sampling filters"), (KVCache, "write", "cache writes"),
            (sampling.IncrementalDecoder, "code_logits", "network"),
            (sampling.IncrementalDecoder, "position_logits", "network")]


@contextlib.contextmanager
def labelled_functions():
    """Wrap the functions of LABELLED in profiler ranges named by their label, for this block only."""
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in LABELLED]

    def wrap(function, label):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with record_function(label):
                return function(*args, **kwargs)
        return wrapper

    for (owner, name, function), (_, _, label) in zip(originals, LABELLED):
        setattr(owner, name, wrap(function, label))
    try:
        yield
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)


def part_of(event) -> str:
    labels, parent = [], event.cpu_parent
    while parent is not None:
        labels.append(parent.name)
        parent = parent.cpu_parent
    if "sampling filters" in labels:
        return "sampling filters"
    if "cache writes" in labels:
        return "cache writes"
    if "network" in labels:
        if event.name in MATMUL or any(name in MATMUL for name in labels):
            return "weights (matmul)"
        if "scaled_dot_product" in event.name or any("scaled_dot_product" in name for name in labels):
            return "attention"
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
    with labelled_functions(), profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    parts: dict[str, float] = defaultdict(float)
    operators: dict[str, float] = defaultdict(float)
    calls = 0
    for event in prof.events():
        if event.is_user_annotation or event.name in {label for _, _, label in LABELLED}:
            continue
        own = event.self_cpu_time_total / 1e6 / args.steps  # seconds per step
        parts[part_of(event)] += own
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
