"""Stackformer speed: generation with and without the KV cache, weight-read bandwidth, training.

Prints one JSON line per measurement. Usage:
    python benchmarks/bench_stackformer.py [--quick] [--sizes paper small] [--batches 1 16]
                                           [--steps N] [--uncached-steps N] [--device cpu|cuda] [--dtype fp32|bf16]

Sizes: "paper" is 12 + 12 layers, width 1024, 16 heads; "small" 6 + 6 layers, width 512, 8 heads;
both with a 32×32 grid, K = 256 steps, codebook 1024, 1000 classes.

Generation without the cache recomputes the whole prefix every step, so step t costs about a
forward pass over t tokens. Running that for all K steps at the paper size takes minutes per
image on a CPU, so uncached runs are cut at `--uncached-steps`; the full-K time is estimated
by timing forward passes over prefixes of several lengths and summing the interpolated cost
of every step (the partial run checks that estimate: `estimate_check` ≈ 1).

Every time is reported twice: wall clock, and `*_cpu` = process CPU time / threads. On a
shared machine other processes take turns on the cores and inflate the wall time; the CPU
time is what the wall time would be on an idle machine (memory-bandwidth contention still
counts in both). `load_average_1min` says how busy the machine was.

For scale, the reference sampler (no cache; both stacks re-run over the prefix every step) on a
2-thread CPU, fp32, batch 1, 256 steps: 202.5 s per image at the paper size, 26.8 s at the
small size. Targets: cached generation at the paper size, batch 1, ≥ 10× faster than the
uncached one, and ≤ 1.5× the time of reading every weight once per step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass

import torch

from mvq.models.stackformer import Stackformer, StackformerConfig

BASE = dict(codebook_size=1024, grid_size=32, num_tokens=256, num_classes=1000)
SIZES = {
    "paper": dict(code_layers=12, position_layers=12, dim=1024, heads=16),
    "small": dict(code_layers=6, position_layers=6, dim=512, heads=8),
}
REFERENCE_S_PER_IMAGE = {"paper": 202.5, "small": 26.8}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds
    cpu: float   # process CPU seconds / threads: what the wall time would be on an otherwise idle CPU

    def scaled(self, factor: float) -> "Timing":
        return Timing(self.wall * factor, self.cpu * factor)


def clock(fn, device: str, repeats: int = 1) -> Timing:
    """Best wall time and best per-thread CPU time of `repeats` calls.

    The machines this runs on are often shared; CPU time is not inflated by other processes
    taking turns on the cores, so it is reported beside the wall time.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        walls.append(time.perf_counter() - wall)
        cpus.append((time.process_time() - cpu) / torch.get_num_threads())
    return Timing(min(walls), min(cpus))


def with_steps(model: Stackformer, steps: int) -> Stackformer:
    """A view of `model` that decodes only `steps` tokens (same weight tensors, no copy)."""
    config = StackformerConfig(**{**model.config.__dict__, "num_tokens": steps})
    with torch.device("meta"):
        variant = Stackformer(config)
    state = model.state_dict()
    state["step_embedding.weight"] = state["step_embedding.weight"][:steps]
    variant.load_state_dict(state, assign=True)
    return variant.eval()


def weight_read(model: Stackformer, device: str) -> dict:
    """Time to read every weight once: a streaming reduction, and one matrix-vector product per linear layer."""
    params = list(model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in params)
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {w.shape[1]: torch.randn(1, w.shape[1], device=device, dtype=w.dtype) for w in linears}
    with torch.no_grad():
        read = clock(lambda: [p.sum() for p in params], device, repeats=7)
        matvec = clock(lambda: [torch.nn.functional.linear(inputs[w.shape[1]], w) for w in linears], device, 7)
    return {"bench": "weight_read", "bytes": nbytes,
            "read_ms": read.wall * 1e3, "read_GBps": nbytes / read.wall / 1e9, "read_ms_cpu": read.cpu * 1e3,
            "matvec_ms": matvec.wall * 1e3, "matvec_GBps": nbytes / matvec.wall / 1e9,
            "matvec_ms_cpu": matvec.cpu * 1e3}


def prefix_forward_cost(model: Stackformer, batch: int, lengths: list[int], device: str) -> dict[int, Timing]:
    """Seconds of one teacher-forced forward over `length` tokens: the cost of uncached step `length`."""
    k, n = model.config.num_tokens, model.config.num_cells
    codes = torch.randint(0, model.config.codebook_size, (batch, k), device=device)
    positions = torch.sort(torch.rand(batch, n, device=device).argsort(dim=1)[:, :k], dim=1).values
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    costs = {}
    with torch.no_grad():
        model(codes[:, :1], positions[:, :1], labels)  # warm-up
        for length in lengths:
            costs[length] = clock(lambda: model(codes[:, :length], positions[:, :length], labels), device)
    return costs


def interpolated_sum(costs: dict[int, Timing], steps: int) -> Timing:
    """Σ over steps t = 1..steps of the cost of a forward over t tokens, linearly interpolated."""
    points = sorted(costs.items())
    wall = cpu = 0.0
    for t in range(1, steps + 1):
        for (l0, c0), (l1, c1) in zip(points, points[1:]):
            if l0 <= t <= l1:
                w = (t - l0) / max(l1 - l0, 1)
                wall += c0.wall + (c1.wall - c0.wall) * w
                cpu += c0.cpu + (c1.cpu - c0.cpu) * w
                break
    return Timing(wall, cpu)


def bench_generation(name: str, model: Stackformer, batches: list[int], steps: int, uncached_steps: int,
                     estimate_lengths: list[int], device: str, repeats: int) -> None:
    k = model.config.num_tokens
    sampling = dict(top_k=100, top_p=0.95, position_top_k=10, position_top_p=0.95)
    with_steps(model, 4).generate(1, labels=[0], **sampling)  # warm-up
    for batch in batches:
        labels = list(range(batch))
        cached_model = with_steps(model, min(steps, k))
        cached_steps = cached_model.config.num_tokens
        cached = clock(lambda: cached_model.generate(batch, labels=labels, generator=torch.Generator().manual_seed(0),
                                                     **sampling), device, repeats)
        step = cached.scaled(1 / cached_steps)
        image = step.scaled(k / batch)  # cached steps cost about the same at every t
        # Weight-read time measured right after: on a shared machine the bandwidth drifts.
        weights = weight_read(model, device)
        emit({"bench": "generate", "size": name, "batch": batch, "cache": True, "steps": cached_steps, "K": k,
              "seconds": cached.wall, "ms_per_step": step.wall * 1e3, "ms_per_step_cpu": step.cpu * 1e3,
              "s_per_image": image.wall, "s_per_image_cpu": image.cpu, "images_per_s": 1 / image.wall,
              "images_per_s_cpu": 1 / image.cpu, "reference_s_per_image": REFERENCE_S_PER_IMAGE.get(name),
              "weight_read_ms": weights["read_ms"], "weight_read_ms_cpu": weights["read_ms_cpu"],
              "matvec_ms": weights["matvec_ms"], "matvec_ms_cpu": weights["matvec_ms_cpu"],
              "x_weight_read": step.wall * 1e3 / weights["read_ms"],
              "x_weight_read_cpu": step.cpu * 1e3 / weights["read_ms_cpu"],
              "x_matvec": step.wall * 1e3 / weights["matvec_ms"],
              "x_matvec_cpu": step.cpu * 1e3 / weights["matvec_ms_cpu"]})

        partial_model = with_steps(model, min(uncached_steps, k))
        partial_steps = partial_model.config.num_tokens
        partial = clock(lambda: partial_model.generate(batch, labels=labels, use_cache=False,
                                                       generator=torch.Generator().manual_seed(0), **sampling), device)
        costs = prefix_forward_cost(model, batch, sorted(set(estimate_lengths + [1, k])), device)
        estimated = interpolated_sum(costs, k).scaled(1 / batch)
        predicted_partial = interpolated_sum(costs, partial_steps)
        emit({"bench": "generate", "size": name, "batch": batch, "cache": False, "steps": partial_steps, "K": k,
              "seconds": partial.wall, "seconds_cpu": partial.cpu,
              "estimate_check": partial.wall / predicted_partial.wall,
              "estimate_check_cpu": partial.cpu / predicted_partial.cpu,
              "s_per_image_estimated": estimated.wall, "s_per_image_estimated_cpu": estimated.cpu,
              "images_per_s_estimated": 1 / estimated.wall,
              "prefix_forward_s": {str(length): c.wall for length, c in costs.items()},
              "prefix_forward_s_cpu": {str(length): c.cpu for length, c in costs.items()},
              "cache_speedup_estimated": estimated.wall / image.wall,
              "cache_speedup_estimated_cpu": estimated.cpu / image.cpu,
              "reference_s_per_image": REFERENCE_S_PER_IMAGE.get(name)})


def bench_training(name: str, model: Stackformer, batch: int, steps: int, device: str,
                   dtype: torch.dtype | None) -> None:
    k, n = model.config.num_tokens, model.config.num_cells
    codes = torch.randint(0, model.config.codebook_size, (batch, k), device=device)
    positions = torch.sort(torch.rand(batch, n, device=device).argsort(dim=1)[:, :k], dim=1).values
    labels = torch.randint(0, model.config.num_classes, (batch,), device=device)
    model.train()
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.01), lr=5e-4, betas=(0.9, 0.95))
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None)

    def step():
        with autocast:
            loss = model(codes, positions, labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (allocates the optimizer state)
    seconds = clock(lambda: [step() for _ in range(steps)], device).scaled(1 / steps)
    emit({"bench": "train", "size": name, "batch": batch, "seq_len": k, "s_per_step": seconds.wall,
          "tokens_per_s": batch * k / seconds.wall, "s_per_step_cpu": seconds.cpu,
          "tokens_per_s_cpu": batch * k / seconds.cpu})
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="few steps, batch 1 only at the paper size, no paper-size training (a few minutes)")
    parser.add_argument("--sizes", nargs="+", default=["paper", "small"], choices=list(SIZES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--steps", type=int, default=None, help="cap on cached decoding steps (default: K)")
    parser.add_argument("--uncached-steps", type=int, default=None,
                        help="cap on uncached decoding steps (default: 32, --quick: 8)")
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="cached generation: best of this many runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    steps = args.steps or (32 if args.quick else BASE["num_tokens"])
    uncached_steps = args.uncached_steps or (8 if args.quick else 32)
    emit({"bench": "environment", "torch": torch.__version__, "threads": torch.get_num_threads(),
          "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
          "cpu": cpu_name(), "dtype": args.dtype, "quick": args.quick,
          "load_average_1min": os.getloadavg()[0]})
    torch.manual_seed(0)

    for name in args.sizes:
        model = Stackformer(StackformerConfig(**BASE, **SIZES[name], dropout=0.1)).to(args.device).eval()
        if dtype is not None:
            model = model.to(dtype)
        weights = weight_read(model, args.device)
        emit({**weights, "size": name, "parameters": sum(p.numel() for p in model.parameters())})
        batches = [1] if args.quick and name == "paper" else args.batches
        lengths = [1, 128, 256] if args.quick else [1, 64, 128, 192, 256]
        bench_generation(name, model, batches, steps, uncached_steps, lengths, args.device, args.repeats)
        if not (args.quick and name == "paper"):
            model = model.float() if dtype is not None else model
            bench_training(name, model, batch=2 if name == "paper" else 8, steps=args.train_steps,
                           device=args.device, dtype=dtype)
        del model


if __name__ == "__main__":
    main()
