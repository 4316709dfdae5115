"""MQ-VAE speed, side by side with the authors' modules in the same run.

Arms, alternated round by round (ours, reference, ours, reference, …) at the same
architecture and input, each model initialised randomly with identical parameter shapes:
  train_step  forward + backward of L1 + codebook loss (no LPIPS or GAN: those are the same
              networks in both implementations), gradients cleared, no optimiser step
  tokenize    images → (codes, positions)
  detokenize  (codes, positions) → images
Configs: "small" (64 px, batch 8, the `mqvae_small`-sized model) and "paper" (256 px, batch 2,
the paper's ImageNet model). Prints JSON lines; `ratio` is reference time / mvq time.
    python benchmarks/bench_mqvae.py [--configs small paper] [--repeats N] [--threads T]
Without the reference modules (a user's clone) only mvq's times are printed.
"""

from __future__ import annotations

import argparse

import torch

from harness import emit, environment, interleaved, ratio, summary
from mvq.models.mqvae import MQVAE, MQVAEConfig
from reference_models import ReferenceMQVAE, unavailable_reason, used_parameter_shapes

CONFIGS = {
    "small": (dict(resolution=64, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(8,),
                   z_channels=64, keep_ratio=0.25, codebook_size=1024, codebook_dim=64, demask_layers=2), 8),
    "paper": (dict(), 2),
}
DEFAULT_REPEATS = {"small": 7, "paper": 3}


def arms_for(model, images: torch.Tensor, reference: bool) -> dict:
    """The three operations of one implementation, as zero-argument callables."""

    def train_step():
        model.train()
        if reference:
            reconstruction, codebook_loss = model(images)
        else:
            out = model(images)
            reconstruction, codebook_loss = out.reconstruction, out.codebook_loss
        ((reconstruction - images).abs().mean() + codebook_loss).backward()
        model.zero_grad(set_to_none=True)

    model.eval()
    with torch.no_grad():
        if reference:
            _, _, codes, masked = model.encode(images)
            codes, positions = codes.reshape(images.shape[0], -1), masked["sample_index"]
        else:
            codes, positions = model.tokenize(images)

    def tokenize():
        model.eval()
        with torch.no_grad():
            model.encode(images) if reference else model.tokenize(images)

    def detokenize():
        model.eval()
        model.detokenize(codes, positions)

    return {"train_step": train_step, "tokenize": tokenize, "detokenize": detokenize}


def bench(name: str, repeats: int, with_reference: bool) -> None:
    overrides, batch = CONFIGS[name]
    config = MQVAEConfig(**overrides)
    images = torch.rand(batch, 3, config.resolution, config.resolution) * 2 - 1
    ours = arms_for(MQVAE(config), images, reference=False)
    theirs = None
    if with_reference:
        reference = ReferenceMQVAE(config)
        mine = used_parameter_shapes(MQVAE(config), unused=("codebook",))
        their_shapes = used_parameter_shapes(reference, unused=("temb_proj", "codebook"))
        if mine != their_shapes:
            raise SystemExit(f"{name}: the reference model's parameter shapes differ from ours; not comparable")
        theirs = arms_for(reference, images, reference=True)
    for operation in ours:
        arms = {"mvq": ours[operation]}
        if theirs is not None:
            arms["reference"] = theirs[operation]
        samples = interleaved(arms, repeats)
        record = {"bench": f"mqvae_{operation}", "config": name, "batch": batch, "resolution": config.resolution,
                  "mvq_s": summary(samples["mvq"]), "mvq_images_per_s": batch / summary(samples["mvq"])["median"]}
        if theirs is not None:
            record["reference_s"] = summary(samples["reference"])
            record.update(ratio(samples["reference"], samples["mvq"]))
        emit(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["small", "paper"], choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per arm (default: 7 small, 3 paper)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    skipped = unavailable_reason()
    emit(environment(reference=skipped or "side by side in this run"))
    for name in args.configs:
        bench(name, args.repeats or DEFAULT_REPEATS[name], with_reference=skipped is None)


if __name__ == "__main__":
    main()
