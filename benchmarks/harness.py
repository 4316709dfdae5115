"""Timing helpers shared by the benchmarks: interleaved arms, medians and spread, JSON lines.

Speed ratios are only meaningful when both sides run in the same process on the same
machine at the same time: a shared machine's speed drifts by tens of percent between runs.
So every comparison here alternates its arms (A B A B …), reports each arm's median and
range, and states the ratio of medians together with the range of the per-round ratios.

Every time is taken twice: wall clock, and `cpu` = process CPU time / threads. When other
processes take turns on the cores the wall time grows but the CPU time does not; memory
bandwidth contention inflates both.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def emit(record: dict) -> None:
    """One JSON line on stdout (floats rounded to 4 significant digits)."""
    print(json.dumps({key: _rounded(value) for key, value in record.items()}), flush=True)


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    return value


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment(**extra) -> dict:
    """Where the numbers come from: torch version, threads, CPU/GPU, and how busy the machine was."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"bench": "environment", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": cpu_name(), "cuda_device": device, "load_average_1min": os.getloadavg()[0], **extra}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds
    cpu: float   # process CPU seconds / threads


def measure(fn: Callable[[], object]) -> Sample:
    """Wall and per-thread CPU seconds of one call (device work included)."""
    synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize()
    return Sample(time.perf_counter() - wall, (time.process_time() - cpu) / torch.get_num_threads())


def interleaved(arms: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[Sample]]:
    """Time every arm `repeats` times, alternating arms round by round (A B A B …) after `warmup` calls each."""
    for fn in arms.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[Sample]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            samples[name].append(measure(fn))
    return samples


def summary(samples: list[Sample], scale: float = 1.0) -> dict:
    """Median, min and max of wall and CPU seconds, each multiplied by `scale` (e.g. 1/steps)."""
    walls = [s.wall * scale for s in samples]
    cpus = [s.cpu * scale for s in samples]
    return {"median": statistics.median(walls), "min": min(walls), "max": max(walls),
            "median_cpu": statistics.median(cpus), "n": len(samples)}


def ratio(slow: list[Sample], fast: list[Sample], slow_scale: float = 1.0, fast_scale: float = 1.0) -> dict:
    """slow / fast: ratio of medians, the range of the ratios of the same round (adjacent in time), the
    ratio of the fastest runs (least disturbed by other processes) and the median ratio of CPU times."""
    rounds = [(s.wall * slow_scale) / (f.wall * fast_scale) for s, f in zip(slow, fast)]
    rounds_cpu = [(s.cpu * slow_scale) / (f.cpu * fast_scale) for s, f in zip(slow, fast)]
    return {"ratio": statistics.median(s.wall for s in slow) * slow_scale
            / (statistics.median(f.wall for f in fast) * fast_scale),
            "ratio_rounds_min": min(rounds), "ratio_rounds_max": max(rounds),
            "ratio_of_minima": min(s.wall for s in slow) * slow_scale / (min(f.wall for f in fast) * fast_scale),
            "ratio_cpu": statistics.median(rounds_cpu)}
