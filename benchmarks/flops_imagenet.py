"""FLOPs of one training step per image of the paper's ImageNet models, counted on the CPU (no GPU needed).

Stage 1: the MQ-VAE (configs/stage1/mqvae_imagenet_f8_r25.yaml) forward and backward at 256 px, plus
the LPIPS-VGG16 loss (forward and backward through the frozen trunk) and the patch discriminator
(its own step and the generator's adversarial term). Stage 2: the 12 + 12-layer Stackformer over
K = 256 tokens, forward and backward. Counted by torch.utils.flop_counter (matrix multiplies and
convolutions: 2 FLOPs a multiply-add), so elementwise work is left out. Prints JSON lines, and the
time an epoch of ImageNet's 1,281,167 images would take on 8 GPUs of a given dense bf16 peak at an
assumed model-FLOPs utilisation: an estimate, to be replaced by a measurement on the GPU.
    python benchmarks/flops_imagenet.py [--peak-tflops 312] [--utilisation 0.35] [--gpus 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import emit, environment

REPOSITORY = Path(__file__).resolve().parents[1]
IMAGENET_TRAIN = 1_281_167


def count(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def stage1_flops() -> dict:
    import warnings

    import lpips

    from mvq.losses.discriminator import PatchDiscriminator
    from mvq.models.mqvae import MQVAE

    vae = MQVAE.from_config(REPOSITORY / "configs/stage1/mqvae_imagenet_f8_r25.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        perceptual = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).requires_grad_(False)
    disc = PatchDiscriminator()
    images = torch.rand(1, 3, 256, 256) * 2 - 1

    def generator_step():
        out = vae(images)
        loss = (out.reconstruction - images).abs().mean() + perceptual(out.reconstruction, images).mean()
        loss = loss - disc(out.reconstruction).mean() + out.codebook_loss
        loss.backward()

    def discriminator_step():
        with torch.no_grad():
            fake = vae(images).reconstruction
        (disc(images).mean() - disc(fake).mean()).backward()

    generator = count(generator_step)
    discriminator = count(discriminator_step)
    return {"generator_step": generator, "discriminator_step": discriminator, "total": generator + discriminator,
            "parameters": sum(p.numel() for p in vae.parameters())}


def stage2_flops() -> dict:
    from mvq.config import load_yaml
    from mvq.models.stackformer import Stackformer

    section = load_yaml(REPOSITORY / "configs/stage2/stackformer_imagenet_v12p12_class.yaml")["model"]
    model = Stackformer.from_config({**section, "codebook_size": 1024, "grid_size": 32, "num_tokens": 256})
    codes = torch.randint(0, 1024, (1, 256))
    positions = torch.randperm(1024)[:256].sort().values[None]
    labels = torch.tensor([3])

    def step():
        out = model(codes, positions, labels)
        out.loss.backward()

    return {"total": count(step), "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak-tflops", type=float, default=312.0, help="dense bf16 peak of one GPU (A100: 312)")
    parser.add_argument("--utilisation", type=float, default=0.35, help="assumed model-FLOPs utilisation")
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    emit(environment(peak_tflops=args.peak_tflops, utilisation=args.utilisation, gpus=args.gpus))
    rate = args.peak_tflops * 1e12 * args.utilisation * args.gpus
    for stage, flops in (("stage1_mqvae_f8_r25", stage1_flops()), ("stage2_stackformer_12_12", stage2_flops())):
        emit({"bench": "flops_per_image", "stage": stage, **flops,
              "epoch_hours_estimate": flops["total"] * IMAGENET_TRAIN / rate / 3600})


if __name__ == "__main__":
    main()
