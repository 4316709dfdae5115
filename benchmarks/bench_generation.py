"""Sampling speed against the method's promise and against the hardware's limit (paper size, cached).

All at the paper's width and depth (width 1024, 16 heads), batch sizes alternated round by round:
  masked vs full grid  mvq's Stackformer (12 + 12 layers, K = 256 of N = 1024 cells) against a plain
                       GPT of the same total depth (24 layers) over all 1,024 cells (full_grid_gpt.py).
                       Masked quantization promises about N / K = 4× fewer steps. The Stackformer
                       runs all 256 steps; the full-grid GPT's 1,024-step time is EXTRAPOLATED from
                       16-step segments starting at steps 0, 256, 512, 768 and 1008 (a cached step's
                       cost depends only on how many tokens are cached), summed with linear
                       interpolation; `--full-runs` also decodes all 1,024 steps to check that.
  weight-read limit    at batch 1 a step must read every weight once: seconds per step (32-step runs)
                       against the time of one pass over all weights (a streaming sum: the memory
                       bandwidth of this run) and of one matrix-vector product per linear layer; the
                       fastest of several alternated runs of each, and the medians.
  throughput           images/s at batch 1 and 16 (all 256 steps) and 64 (the first 32 steps,
                       EXTRAPOLATED × 256/32: a step's arithmetic grows with the cache, but attention over
                       256 cached tokens is < 4 % of it (from the shapes), so this overestimates
                       throughput by at most a few percent).
    python benchmarks/bench_generation.py [--batches 1 16 64] [--repeats N] [--threads T] [--full-runs]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from full_grid_gpt import FullGridGPT
from harness import Sample, emit, environment, measure, summary
from mvq.models.stackformer import Stackformer, StackformerConfig
from reference_models import interpolated_total

PAPER = dict(codebook_size=1024, grid_size=32, num_tokens=256, num_classes=1000, code_layers=12,
             position_layers=12, dim=1024, heads=16, dropout=0.0)
SEGMENT = 16
EXTRAPOLATED_STEPS = 32  # decoded steps at batches above 16


def with_steps(model: Stackformer, steps: int) -> Stackformer:
    """The same model (same weight tensors, no copy) decoding only its first `steps` tokens."""
    config = StackformerConfig(**{**model.config.__dict__, "num_tokens": steps})
    with torch.device("meta"):
        view = Stackformer(config)
    state = model.state_dict()
    state["step_embedding.weight"] = state["step_embedding.weight"][:steps]
    view.load_state_dict(state, assign=True)
    return view.eval()


def weight_read(model: torch.nn.Module) -> dict[str, Sample]:
    """Time to read every weight once (streaming sum) and one matrix-vector product per linear layer."""
    params = list(model.parameters())
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    vectors = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in linears}
    with torch.no_grad():
        reads = [measure(lambda: [p.sum() for p in params]) for _ in range(5)]
        matvecs = [measure(lambda: [torch.nn.functional.linear(vectors[w.shape[1]], w) for w in linears])
                   for _ in range(5)]
    return {"read": min(reads, key=lambda s: s.wall), "matvec": min(matvecs, key=lambda s: s.wall)}


def full_grid_seconds(gpt: FullGridGPT, labels: torch.Tensor) -> float:
    """Extrapolated seconds of all N steps: one cache allocation, then segments at a few cache lengths
    (sharing that cache), summed with linear interpolation."""
    n, cache = gpt.num_cells, None

    def allocate():
        nonlocal cache
        cache = gpt.new_cache(labels.shape[0])

    allocation = measure(allocate).wall
    per_step = {}  # cost of a step at its segment's middle
    for start in sorted({0, n // 4, n // 2, 3 * n // 4, n - SEGMENT}):
        segment = measure(lambda: gpt.generate(labels, SEGMENT, first_step=start, cache=cache))
        per_step[start + SEGMENT // 2] = segment.wall / SEGMENT
    per_step[1], per_step[n] = per_step[min(per_step)], per_step[max(per_step)]
    return allocation + interpolated_total(per_step, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-runs", action="store_true",
                        help="also decode the full-grid GPT's 1,024 steps (checks the extrapolation; slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    emit(environment())
    model = Stackformer(StackformerConfig(**PAPER)).eval()
    c = model.config
    gpt = FullGridGPT(c.codebook_size, c.num_cells, c.num_classes, c.code_layers + c.position_layers,
                      c.dim, c.heads).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    emit({"bench": "models", "stackformer_parameters": sum(p.numel() for p in model.parameters()),
          "full_grid_gpt_parameters": sum(p.numel() for p in gpt.parameters()), "weight_bytes": weight_bytes})
    short = with_steps(model, EXTRAPOLATED_STEPS)
    short.generate(1, labels=[0])  # warm-up
    gpt.generate(torch.zeros(1, dtype=torch.long), 4)

    for batch in args.batches:
        labels = torch.arange(batch) % c.num_classes
        decoder, steps = (model, c.num_tokens) if batch <= 16 else (short, EXTRAPOLATED_STEPS)
        masked, full, checks = [], [], []
        for _ in range(args.repeats):
            masked.append(measure(lambda: decoder.generate(batch, labels=labels.tolist())))
            if batch <= 16:
                full.append(full_grid_seconds(gpt, labels))
            if args.full_runs and batch <= 16:
                checks.append(measure(lambda: gpt.generate(labels)).wall)
        image = summary(masked, scale=c.num_tokens / steps / batch)
        record = {"bench": "generation", "batch": batch, "decoded_steps": steps, "K": c.num_tokens,
                  "extrapolated": steps != c.num_tokens, "masked_s_per_image": image,
                  "images_per_s": 1 / image["median"]}
        if full:
            full_image = statistics.median(full) / batch
            rounds = [f / m.wall for f, m in zip(full, masked)]
            record.update({"full_grid_s_per_image_extrapolated": full_image,
                           "full_over_masked": full_image / image["median"],
                           "full_over_masked_rounds": [min(rounds), max(rounds)]})
        if checks:
            record["full_grid_extrapolation_check"] = statistics.median(checks) / statistics.median(full)
        emit(record)
        if batch == 1:
            emit(weight_read_limit(model, short, weight_bytes, args.repeats + 2))


def weight_read_limit(model: Stackformer, short: Stackformer, weight_bytes: int, rounds: int) -> dict:
    """Batch-1 step time against one read of every weight, alternated in short runs.

    Short runs (32 steps) and the fastest of several: on a shared machine they are the runs least
    disturbed by other processes, for both sides alike.
    """
    steps, reads, matvecs = [], [], []
    for _ in range(rounds):
        steps.append(measure(lambda: short.generate(1, labels=[0])))
        weights = weight_read(model)
        reads.append(weights["read"])
        matvecs.append(weights["matvec"])
    n = short.config.num_tokens
    step, read, matvec = summary(steps, scale=1 / n), summary(reads), summary(matvecs)
    return {"bench": "weight_read_limit", "batch": 1, "steps_per_run": n, "ms_per_step": step["min"] * 1e3,
            "ms_per_step_median": step["median"] * 1e3, "weight_read_ms": read["min"] * 1e3,
            "bandwidth_GBps": weight_bytes / read["min"] / 1e9, "matvec_ms": matvec["min"] * 1e3,
            "step_over_weight_read": step["min"] / read["min"],
            "step_over_weight_read_median": step["median"] / read["median"],
            "step_over_weight_read_cpu": step["median_cpu"] / read["median_cpu"],
            "step_over_matvec": step["min"] / matvec["min"]}


if __name__ == "__main__":
    main()
