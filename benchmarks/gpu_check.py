"""One command for a CUDA machine: do the models work there, and how fast are they (bf16)?

    python benchmarks/gpu_check.py                # on a CUDA machine; finishes in under 8 minutes
    python benchmarks/gpu_check.py --dry-run      # anywhere: the same steps, tiny sizes, on the CPU

Prints JSON lines, in this order:
  tests            the test files whose code paths differ on a GPU (quantizer, de-mask attention,
                   MQ-VAE, Stackformer, sampling), through pytest (not in --dry-run)
  check_*          on the device: MQ-VAE outputs against the CPU's; cached against uncached sampling;
                   a sample's tokens independent of the batch it is drawn in
  stage1_train_step       paper-config MQ-VAE, batch 8, bf16 autocast: forward, L1 + codebook loss,
                          backward, Adam step (LPIPS and the discriminator are not included)
  stackformer_train_step  paper-size Stackformer (12 + 12 layers, width 1024), batch 32, bf16 autocast, AdamW
  sampling                paper-size Stackformer in bf16, all K = 256 steps, batch 1 / 64 / 256,
                          eager and with both transformer stacks under torch.compile (dynamic shapes)
A measurement that would start after `--budget-s` seconds is skipped (and says so), so the whole
run stays under the limit. Exit status 1 when a test or a check fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from harness import REPOSITORY, emit, environment
from mvq.models.mqvae import MQVAE, MQVAEConfig
from mvq.models.stackformer import Stackformer, StackformerConfig

DEVICE_TESTS = ["test_quantizer.py", "test_demask_attention.py", "test_mqvae.py", "test_stackformer.py",
                "test_sampling.py", "test_reference_parity.py"]
TINY_MQVAE = dict(resolution=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=64,
                  keep_ratio=0.25, codebook_size=64, codebook_dim=16, demask_layers=2)
TINY_STACKFORMER = dict(codebook_size=64, grid_size=8, num_tokens=16, num_classes=10, code_layers=2,
                        position_layers=2, dim=64, heads=4, dropout=0.0)
PAPER_STACKFORMER = dict(codebook_size=1024, grid_size=32, num_tokens=256, num_classes=1000, code_layers=12,
                         position_layers=12, dim=1024, heads=16, dropout=0.0)


class Run:
    """Sizes of this run, the device, and the time budget."""

    def __init__(self, dry_run: bool, budget_s: float):
        self.dry_run = dry_run
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.deadline = time.monotonic() + budget_s
        self.failed = False
        self.mqvae = TINY_MQVAE if dry_run else {}
        self.stackformer = TINY_STACKFORMER if dry_run else PAPER_STACKFORMER
        self.stage1_batch, self.stage2_batch = (2, 4) if dry_run else (8, 32)
        self.sampling_batches = (1, 2) if dry_run else (1, 64, 256)
        self.timed_steps, self.warmup_steps = (1, 1) if dry_run else (5, 2)
        self.compile_backend = "eager" if dry_run else "inductor"  # eager: traces like inductor, compiles nothing

    def in_budget(self, name: str) -> bool:
        if time.monotonic() < self.deadline:
            return True
        emit({"bench": name, "skipped": "time budget spent"})
        return False

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def seconds_per_call(self, fn, calls: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        self.sync()
        return (time.perf_counter() - start) / calls

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def peak_memory(self) -> dict:
        if self.device.type != "cuda":
            return {}
        peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        return {"peak_memory_GiB": peak}


def run_tests(run: Run) -> None:
    files = [str(Path(REPOSITORY) / "tests" / name) for name in DEVICE_TESTS
             if (Path(REPOSITORY) / "tests" / name).exists()]
    if run.dry_run:
        emit({"bench": "tests", "skipped": "dry run", "files": [Path(f).name for f in files]})
        return
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                            cwd=REPOSITORY, capture_output=True, text=True, timeout=150)
    lines = (result.stdout + result.stderr).strip().splitlines()
    run.failed |= result.returncode != 0
    emit({"bench": "tests", "passed": result.returncode == 0, "summary": lines[-1] if lines else "",
          "seconds": time.perf_counter() - start, "files": [Path(f).name for f in files]})


def check_mqvae(run: Run) -> None:
    torch.manual_seed(0)
    model = MQVAE(MQVAEConfig(**TINY_MQVAE)).eval()
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = model(images)
        got = model.to(run.device)(images.to(run.device))
    same_positions = (got.positions.cpu() == expected.positions).float().mean().item()
    same_codes = (got.codes.cpu() == expected.codes).float().mean().item()
    difference = (got.reconstruction.cpu() - expected.reconstruction).abs().max().item()
    passed = same_positions >= 0.99 and difference < 5e-2  # TF32 convolutions on CUDA differ in ~1e-3
    run.failed |= not passed
    emit({"bench": "check_mqvae_matches_cpu", "passed": passed, "same_positions": same_positions,
          "same_codes": same_codes, "reconstruction_max_abs_difference": difference})


def check_sampling(run: Run) -> None:
    torch.manual_seed(0)
    model = Stackformer(StackformerConfig(**TINY_STACKFORMER)).to(run.device).eval()
    labels = [0, 1, 2]

    def sample(batch_labels, **settings):
        generators = [torch.Generator().manual_seed(i) for i in range(len(batch_labels))]
        return model.generate(len(batch_labels), labels=batch_labels, generator=generators, **settings)

    cached, uncached = sample(labels), sample(labels, use_cache=False)
    alone = sample(labels[:1])
    cache_agrees = all(torch.equal(a, b) for a, b in zip(cached, uncached))
    batch_independent = all(torch.equal(a[:1], b) for a, b in zip(cached, alone))
    run.failed |= not (cache_agrees and batch_independent)
    emit({"bench": "check_sampling", "passed": cache_agrees and batch_independent,
          "cached_equals_uncached": cache_agrees, "independent_of_batch": batch_independent})


def stage1_train_step(run: Run) -> None:
    if not run.in_budget("stage1_train_step"):
        return
    torch.manual_seed(0)
    model = MQVAE(MQVAEConfig(**run.mqvae)).to(run.device).train()
    r = model.config.resolution
    images = torch.rand(run.stage1_batch, 3, r, r, device=run.device) * 2 - 1
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9))

    def step():
        with run.autocast():
            out = model(images)
            loss = (out.reconstruction.float() - images).abs().mean() + out.codebook_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = run.seconds_per_call(step, run.timed_steps, run.warmup_steps)
    emit({"bench": "stage1_train_step", "dtype": "bf16 autocast", "batch": run.stage1_batch, "resolution": r,
          "s_per_step": seconds, "images_per_s": run.stage1_batch / seconds, **run.peak_memory()})


def stackformer_train_step(run: Run) -> None:
    if not run.in_budget("stackformer_train_step"):
        return
    torch.manual_seed(0)
    model = Stackformer(StackformerConfig(**run.stackformer)).to(run.device).train()
    c, b = model.config, run.stage2_batch
    codes = torch.randint(0, c.codebook_size, (b, c.num_tokens), device=run.device)
    positions = torch.rand(b, c.num_cells, device=run.device).argsort(dim=1)[:, :c.num_tokens].sort(dim=1).values
    labels = torch.randint(0, c.num_classes, (b,), device=run.device)
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.01), lr=5e-4, betas=(0.9, 0.95))

    def step():
        with run.autocast():
            loss = model(codes, positions, labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = run.seconds_per_call(step, run.timed_steps, run.warmup_steps)
    emit({"bench": "stackformer_train_step", "dtype": "bf16 autocast", "batch": b, "seq_len": c.num_tokens,
          "s_per_step": seconds, "tokens_per_s": b * c.num_tokens / seconds, **run.peak_memory()})


def sampling(run: Run) -> None:
    torch.manual_seed(0)
    model = Stackformer(StackformerConfig(**run.stackformer)).to(run.device, torch.bfloat16).eval()
    k = model.config.num_tokens
    for compiled in (False, True):
        if compiled:
            for stack in (model.code_transformer, model.position_transformer):
                stack.compile(dynamic=True, backend=run.compile_backend)
        for batch in run.sampling_batches:
            name = f"sampling (batch {batch}, {'compiled' if compiled else 'eager'})"
            if not run.in_budget(name):
                continue
            labels = [i % model.config.num_classes for i in range(batch)]
            start = time.perf_counter()
            model.generate(batch, labels=labels)  # warm-up (and compilation)
            run.sync()
            first = time.perf_counter() - start
            seconds = run.seconds_per_call(lambda: model.generate(batch, labels=labels), calls=2, warmup=0)
            emit({"bench": "sampling", "dtype": "bf16 weights", "compiled": compiled, "batch": batch, "steps": k,
                  "s_per_batch": seconds, "ms_per_step": seconds / k * 1e3, "images_per_s": batch / seconds,
                  "first_call_s": first, **run.peak_memory()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script itself)")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="no measurement starts after this many seconds (default 360)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the test files")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run with --dry-run to check the script on the CPU")
    run = Run(args.dry_run, args.budget_s)
    if args.dry_run:
        torch.set_num_threads(1)  # tiny sizes: parallel regions cannot pay off
    emit(environment(dry_run=args.dry_run))
    if not args.skip_tests:
        run_tests(run)
    for step in (check_mqvae, check_sampling, stage1_train_step, stackformer_train_step, sampling):
        step(run)
    emit({"bench": "gpu_check", "passed": not run.failed})
    sys.exit(1 if run.failed else 0)


if __name__ == "__main__":
    main()
