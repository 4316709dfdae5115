"""MQ-VAE speed: training step (forward + backward of L1 + codebook loss) and tokenize/detokenize.

Prints one JSON line per measurement. Usage:
    python benchmarks/bench_mqvae.py [--configs small paper] [--steps N] [--threads T]
For scale, the reference implementation on a 2-thread CPU (torch 2.14.1, fp32) takes 0.292 s per
training step at the small config (64 px, batch 8) and 12.5 s at the paper config (256 px, batch 2).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mvq.models.mqvae import MQVAE, MQVAEConfig

CONFIGS = {
    "small": (dict(resolution=64, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(8,),
                   z_channels=64, keep_ratio=0.25, codebook_size=1024, codebook_dim=64, demask_layers=2), 8, 0.292),
    "paper": (dict(), 2, 12.5),
}


def timed(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def bench(name: str, steps: int, device: str, dtype: torch.dtype | None) -> list[dict]:
    overrides, batch, reference_s = CONFIGS[name]
    model = MQVAE(MQVAEConfig(**overrides)).to(device)
    r = model.config.resolution
    x = torch.rand(batch, 3, r, r, device=device) * 2 - 1
    autocast = torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None)

    def train_step():
        model.train()
        with autocast:
            out = model(x)
            loss = (out.reconstruction.float() - x).abs().mean() + out.codebook_loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    codes, positions = model.eval().tokenize(x)

    def tokenize():
        with autocast:
            model.tokenize(x)
        if device == "cuda":
            torch.cuda.synchronize()

    def detokenize():
        with autocast:
            model.detokenize(codes, positions)
        if device == "cuda":
            torch.cuda.synchronize()

    warmup = 1 if device == "cpu" else 3
    rows = []
    step_s = timed(train_step, steps, warmup)
    row = {"bench": "mqvae_train_step", "config": name, "batch": batch, "resolution": r, "device": device,
           "dtype": str(dtype or torch.float32).replace("torch.", ""), "threads": torch.get_num_threads(),
           "s_per_step": round(step_s, 4), "images_per_s": round(batch / step_s, 2)}
    if device == "cpu" and dtype is None:
        row["reference_s_per_step"] = reference_s
        row["speedup_vs_reference"] = round(reference_s / step_s, 2)
    rows.append(row)
    for label, fn in [("mqvae_tokenize", tokenize), ("mqvae_detokenize", detokenize)]:
        s = timed(fn, steps, warmup)
        rows.append({"bench": label, "config": name, "batch": batch, "device": device,
                     "images_per_s": round(batch / s, 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["small", "paper"], choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in args.configs:
        for row in bench(name, args.steps, args.device, torch.bfloat16 if args.bf16 else None):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
