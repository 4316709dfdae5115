"""What makes a CPU training step fastest: precision, memory format, compilation, threads, processes.

Stage 1: the generator step of the zoo photo tokenizer (`configs/zoo/mqvae_photos_64.yaml`, 64 px,
batch 8) as training runs it before the discriminator starts: forward, L1 + LPIPS(VGG16) +
codebook loss, backward, Adam step. Stage 2: the step of a Stackformer of the zoo's Fashion-MNIST
size on random tokens of an 8×8 grid (K = 16). Arms, alternated round by round (A B A B …) in one
process, each from the same initial weights on the same batch:

    fp32            eager float32, 2 threads: today's path, the baseline of every ratio
    bf16            autocast to bfloat16 (fast only on cores with native bf16 arithmetic)
    channels_last   stage 1 only: model, LPIPS and images in channels-last memory format
    compile         torch.compile (inductor's CPU backend) of the model
    fp32_1thread    eager float32 on one thread

`--processes` also times one optimizer step of the global batch as two data-parallel processes
of one thread each (gloo, half the batch each) against one process of two threads, each arm a
fresh pair of subprocesses, alternated. `--curves N` trains N steps per arm from the same start
on the same sequence of batches and prints the loss curves (an arm kept must leave them unchanged
within noise). Prints JSON lines; ratios are baseline / arm (above 1: the arm is faster).
    python benchmarks/bench_cpu_training.py [--stage 1 2] [--repeats N] [--steps N] [--processes] [--curves N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from harness import REPOSITORY, emit, environment, interleaved, ratio, summary

from mvq.losses.stage1 import Stage1Loss
from mvq.models.mqvae import MQVAE
from mvq.training.config import load_training_config
from mvq.storage.network_weights import VGG16, find

CONFIG = Path(REPOSITORY) / "configs" / "zoo" / "mqvae_photos_64.yaml"
STACKFORMER = dict(codebook_size=1024, grid_size=8, num_tokens=16, num_classes=10, class_dropout=0.1,
                   code_layers=8, position_layers=4, dim=256, heads=8)
STAGE2_BATCH = 64


def stage1_setup(channels_last: bool = False):
    """(model, loss, optimizer, images) of the zoo photo tokenizer, seeded: every arm starts the same."""
    _, config = load_training_config(CONFIG, ["data.root=/unused"])
    torch.manual_seed(0)
    model = MQVAE(config.model).train()
    loss = Stage1Loss(config.loss)
    images = torch.rand(config.data.batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        loss = loss.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas))
    return model, loss, optimizer, images


def stage1_step(precision: str = "fp32", channels_last: bool = False, compiled: bool = False):
    model, loss, optimizer, images = stage1_setup(channels_last)
    forward = torch.compile(model) if compiled else model

    def step(batch: torch.Tensor = images) -> float:
        with autocast(precision):
            out = forward(batch)
            total, _ = loss.generator_loss(batch, out.reconstruction, out.codebook_loss, 0, model.last_layer)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(total.detach())

    return step


def stage2_step(precision: str = "fp32", compiled: bool = False):
    from mvq.models.stackformer import Stackformer, StackformerConfig

    torch.manual_seed(0)
    model = Stackformer(StackformerConfig(**STACKFORMER)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.95), weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, STACKFORMER["codebook_size"], (STAGE2_BATCH, STACKFORMER["num_tokens"]), generator=g)
    positions = torch.rand(STAGE2_BATCH, 64, generator=g).argsort(1)[:, :STACKFORMER["num_tokens"]].sort(1).values
    labels = torch.randint(0, 10, (STAGE2_BATCH,), generator=g)
    forward = torch.compile(model) if compiled else model

    def step() -> float:
        with autocast(precision):
            total = forward(codes, positions, labels).loss
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(total.detach())

    return step


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def with_threads(threads: int, fn):
    def call():
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(2)
    return call


def time_arms(stage: int, repeats: int, steps: int) -> None:
    make = stage1_step if stage == 1 else stage2_step
    arms = {"fp32": make(), "bf16": make("bf16")}
    if stage == 1:
        arms["channels_last"] = make(channels_last=True)
    arms["compile"] = make(compiled=True)
    arms["fp32_1thread"] = with_threads(1, make())
    calls = {name: (lambda step=step: [step() for _ in range(steps)]) for name, step in arms.items()}
    start = time.perf_counter()
    samples = interleaved(calls, repeats, warmup=1)
    record = {"bench": f"stage{stage}_cpu_step", "batch": 8 if stage == 1 else STAGE2_BATCH,
              "steps_per_call": steps, "seconds": round(time.perf_counter() - start)}
    for name in arms:
        record[f"{name}_s_per_step"] = summary(samples[name], 1 / steps)
        if name != "fp32":
            record[f"speedup_{name}"] = ratio(samples["fp32"], samples[name])
    record["note"] = "speedup = fp32 seconds / arm seconds (median of each arm); compile's first call excluded"
    emit(record)


def curves(stage: int, steps: int, arms: list[str]) -> None:
    """Loss per step of each arm from the same start on the same batches."""
    results = {}
    for name in arms:
        if stage == 1:
            step = stage1_step(precision="bf16" if name == "bf16" else "fp32", channels_last=name == "channels_last",
                               compiled=name == "compile")
            g = torch.Generator().manual_seed(2)
            batches = [torch.rand(8, 3, 64, 64, generator=g) * 2 - 1 for _ in range(steps)]
            losses = [step(batch) for batch in batches]
        else:
            step = stage2_step("bf16" if name == "bf16" else "fp32", compiled=name == "compile")
            losses = [step() for _ in range(steps)]
        results[name] = losses
    emit({"bench": f"stage{stage}_loss_curves", "steps": steps, **{f"{k}_loss": v for k, v in results.items()}})


# ----------------------------------------------------------------------------- one process vs two


def process_worker(world: int, steps: int) -> None:
    """One rank of the processes arm: `steps` stage-1 steps of the global batch 8 split over `world` ranks."""
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", 0))
    torch.set_num_threads(2 // world)
    model, loss, optimizer, images = stage1_setup()
    if world > 1:
        dist.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(model)
        images = images.chunk(world)[rank]
    inner = model.module if world > 1 else model
    times = []
    for _ in range(steps + 1):
        begin = time.perf_counter()
        out = model(images)
        total, _ = loss.generator_loss(images, out.reconstruction, out.codebook_loss, 0, inner.last_layer)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - begin)
    if rank == 0:
        print(json.dumps({"s_per_step": sorted(times[1:])[len(times[1:]) // 2]}))
    if world > 1:
        dist.destroy_process_group()


def time_processes(repeats: int, steps: int) -> None:
    def launch(world: int) -> float:
        env = {**os.environ, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533",
               "OMP_NUM_THREADS": str(2 // world), "PYTHONPATH": os.pathsep.join(sys.path)}
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(world), "--steps", str(steps)],
                                  env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, text=True)
                 for r in range(world)]
        outs = [p.communicate(timeout=1800)[0] for p in procs]
        return json.loads(outs[0].strip().splitlines()[-1])["s_per_step"]

    one, two = [], []
    for _ in range(repeats):
        one.append(launch(1))
        two.append(launch(2))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    emit({"bench": "stage1_processes", "global_batch": 8, "one_process_2_threads_s_per_step": one,
          "two_processes_1_thread_s_per_step": two, "speedup_two_processes": med(one) / med(two),
          "note": "median s/step of each launch (steps after the first); speedup = one / two"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per arm (default: 5)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per timed call (default: 3)")
    parser.add_argument("--processes", action="store_true", help="also time two processes against one")
    parser.add_argument("--curves", type=int, default=0, metavar="N", help="also print N-step loss curves per arm")
    parser.add_argument("--curve-arms", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return process_worker(args.worker, args.steps)
    torch.set_num_threads(2)
    if find(VGG16) is None:
        emit({"bench": "cpu_training", "skipped": "no VGG16 weights: run `mvq weights install` first"})
        return
    emit(environment(config=CONFIG.name, cpu_capability=torch.backends.cpu.get_cpu_capability()))
    for stage in args.stage:
        time_arms(stage, args.repeats, args.steps)
        if args.curves:
            curves(stage, args.curves, args.curve_arms)
    if args.processes:
        time_processes(args.repeats, args.steps)


if __name__ == "__main__":
    main()
