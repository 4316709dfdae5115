"""The cost of masking: a stage-1 training step of the MQ-VAE against the VQGAN of the same widths.

Both models are built from the same encoder and decoder settings (the paper's ImageNet model in
"paper": 256 px, ch 128, ch_mult [1,1,2,2], f8; a 64 px model in "small") and timed side by side
in this run, arms alternated round by round. A step is forward + backward of L1 + codebook loss
(LPIPS and the discriminator cost the same for both models, so they are left out) with the
gradients cleared, no optimiser step. Then where the time goes: the forward time of each
top-level module (encoder, masker, quantizer, de-masker, decoder; the VQGAN's quant convs and
quantizer), measured with forward hooks over a few forward passes in training mode, and the
backward time as step − forward. Prints JSON lines; `ratio` is MQ-VAE time / VQGAN time.
    python benchmarks/bench_masking_cost.py [--configs small paper] [--repeats N] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness import emit, environment, interleaved, ratio, summary
from mvq.models.mqvae import MQVAE, MQVAEConfig
from mvq.models.vqgan import VQGAN, VQGANConfig

WIDTHS = {
    "small": (dict(resolution=64, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(8,), z_channels=64,
                   codebook_size=1024, codebook_dim=64), dict(keep_ratio=0.25, demask_layers=2), 8),
    "paper": (dict(), dict(), 1),  # the config defaults are the paper's ImageNet model (keep 25%, 8 de-mask blocks)
    "tiny": (dict(resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=16,
                  codebook_size=16, codebook_dim=4), dict(keep_ratio=0.25, demask_layers=1), 2),  # checks the script
}
DEFAULT_REPEATS = {"small": 7, "paper": 3, "tiny": 1}


def train_step(model: torch.nn.Module, images: torch.Tensor):
    def step() -> None:
        model.train()
        out = model(images)
        ((out.reconstruction - images).abs().mean() + out.codebook_loss).backward()
        model.zero_grad(set_to_none=True)
    return step


def forward_profile(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median forward seconds of each top-level module, and of the whole forward pass."""
    times: dict[str, list[float]] = {name: [] for name, _ in model.named_children()}
    started: dict[str, float] = {}
    handles = []
    for name, module in model.named_children():
        handles.append(module.register_forward_pre_hook(
            lambda _m, _i, name=name: started.__setitem__(name, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda _m, _i, _o, name=name: times[name].append(time.perf_counter() - started[name])))
    whole = []
    model.train()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            whole.append(time.perf_counter() - start)
    finally:
        for handle in handles:
            handle.remove()
    profile = {name: statistics.median(values) for name, values in times.items() if values}
    profile["forward_total"] = statistics.median(whole)
    return profile


def bench(name: str, repeats: int) -> None:
    widths, masking, batch = WIDTHS[name]
    mqvae = MQVAE(MQVAEConfig(**widths, **masking))
    vqgan = VQGAN(VQGANConfig(**widths))
    images = torch.rand(batch, 3, mqvae.config.resolution, mqvae.config.resolution) * 2 - 1
    samples = interleaved({"mqvae": train_step(mqvae, images), "vqgan": train_step(vqgan, images)}, repeats)
    steps = {arm: summary(values) for arm, values in samples.items()}
    record = {"bench": "masking_cost_train_step", "config": name, "batch": batch,
              "resolution": mqvae.config.resolution, "grid": mqvae.config.grid_size,
              "kept_tokens": mqvae.config.num_tokens, "vqgan_tokens": vqgan.config.num_tokens,
              "parameters": {"mqvae": sum(p.numel() for p in mqvae.parameters()),
                             "vqgan": sum(p.numel() for p in vqgan.parameters())},
              "mqvae_s": steps["mqvae"], "vqgan_s": steps["vqgan"], **ratio(samples["mqvae"], samples["vqgan"])}
    emit(record)
    profiles = {"mqvae": forward_profile(mqvae, images, repeats), "vqgan": forward_profile(vqgan, images, repeats)}
    for arm, profile in profiles.items():
        profile["backward_estimate"] = steps[arm]["median"] - profile["forward_total"]
    emit({"bench": "masking_cost_forward_by_module", "config": name, "seconds": profiles,
          "extra_forward_s": profiles["mqvae"]["forward_total"] - profiles["vqgan"]["forward_total"],
          "extra_backward_s": profiles["mqvae"]["backward_estimate"] - profiles["vqgan"]["backward_estimate"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["small", "paper"], choices=list(WIDTHS),
                        help="small (64 px), paper (256 px, the paper's model), tiny (a seconds-long check of the script)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per arm (default: 7 small, 3 paper)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    emit(environment())
    for name in args.configs:
        bench(name, args.repeats or DEFAULT_REPEATS[name])


if __name__ == "__main__":
    main()
