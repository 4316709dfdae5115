"""FLOPs of one training step per image of the paper's ImageNet models, counted on the CPU (no GPU needed).

Stage 1: the MQ-VAE (configs/stage1/mqvae_imagenet_f8_r25.yaml) forward and backward at 256 px, plus
the LPIPS-VGG16 loss (forward and backward through the frozen trunk) and the patch discriminator
(its own step and the generator's adversarial term). Stage 2: the 12 + 12-layer Stackformer over
K = 256 tokens, forward and backward. Counted by torch.utils.flop_counter (matrix multiplies and
convolutions: 2 FLOPs a multiply-add), so elementwise work is left out. Prints JSON lines, and the
time an epoch of ImageNet's 1,281,167 images would take on 8 GPUs of a given dense bf16 peak at an
assumed model-FLOPs utilisation: an estimate, to be replaced by a measurement on the GPU.

Memory per GPU, estimated the same way: the bytes of the tensors autograd keeps for the backward pass
(the activations; distinct storages, parameters left out) of one image in fp32, times the per-device
batch of the config, plus 16 bytes per trained parameter (fp32 weights, gradients and Adam's two
moments) and 4 per frozen one (LPIPS). An fp32 bound: bf16-mixed keeps most activations in half the
bytes (CPU bf16 autocast is too slow here to count them). The CUDA context, the allocator's slack and
cuDNN workspaces come on top: a GPU run measures them.
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


def saved_bytes(forward, parameters) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of `forward()`, parameters left out."""
    skip = {p.untyped_storage().data_ptr() for p in parameters}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())


GIB = 2 ** 30


def memory_estimate(forward, trained: list, frozen: list, batch: int) -> dict:
    """Activation bytes of one image (fp32) and the GiB per GPU they give at `batch`."""
    activations = saved_bytes(forward, trained + frozen)
    states = 16 * sum(p.numel() for p in trained) + 4 * sum(p.numel() for p in frozen)
    return {"activation_bytes_per_image_fp32": activations, "weights_gradients_adam_bytes": states,
            "batch_per_gpu": batch, "memory_per_gpu_gib_estimate_fp32": (states + batch * activations) / GIB}


def stage1() -> dict:
    import warnings

    import lpips

    from mvq.config import load_yaml
    from mvq.losses.discriminator import PatchDiscriminator
    from mvq.models.mqvae import MQVAE

    config = REPOSITORY / "configs/stage1/mqvae_imagenet_f8_r25.yaml"
    vae = MQVAE.from_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        perceptual = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).requires_grad_(False)
    disc = PatchDiscriminator()
    images = torch.rand(1, 3, 256, 256) * 2 - 1

    def generator_loss() -> torch.Tensor:
        out = vae(images)
        loss = (out.reconstruction - images).abs().mean() + perceptual(out.reconstruction, images).mean()
        return loss - disc(out.reconstruction).mean() + out.codebook_loss

    def discriminator_step():
        with torch.no_grad():
            fake = vae(images).reconstruction
        (disc(images).mean() - disc(fake).mean()).backward()

    generator = count(lambda: generator_loss().backward())
    discriminator = count(discriminator_step)
    # The generator step holds the most activations (the discriminator's own step keeps only its own).
    memory = memory_estimate(generator_loss, [*vae.parameters(), *disc.parameters()], [*perceptual.parameters()],
                             load_yaml(config)["data"]["batch_size"])
    return {"generator_step": generator, "discriminator_step": discriminator, "total": generator + discriminator,
            "parameters": sum(p.numel() for p in vae.parameters()), **memory}


def stage2() -> dict:
    from mvq.config import load_yaml
    from mvq.models.stackformer import Stackformer

    raw = load_yaml(REPOSITORY / "configs/stage2/stackformer_imagenet_v12p12_class.yaml")
    model = Stackformer.from_config({**raw["model"], "codebook_size": 1024, "grid_size": 32, "num_tokens": 256})
    codes = torch.randint(0, 1024, (1, 256))
    positions = torch.randperm(1024)[:256].sort().values[None]
    labels = torch.tensor([3])
    memory = memory_estimate(lambda: model(codes, positions, labels).loss, [*model.parameters()], [],
                             raw["data"]["batch_size"])
    return {"total": count(lambda: model(codes, positions, labels).loss.backward()),
            "parameters": sum(p.numel() for p in model.parameters()), **memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak-tflops", type=float, default=312.0, help="dense bf16 peak of one GPU (A100: 312)")
    parser.add_argument("--utilisation", type=float, default=0.35, help="assumed model-FLOPs utilisation")
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    emit(environment(peak_tflops=args.peak_tflops, utilisation=args.utilisation, gpus=args.gpus))
    rate = args.peak_tflops * 1e12 * args.utilisation * args.gpus
    for stage, counted in (("stage1_mqvae_f8_r25", stage1()), ("stage2_stackformer_12_12", stage2())):
        emit({"bench": "flops_per_image", "stage": stage, **counted,
              "epoch_hours_estimate": counted["total"] * IMAGENET_TRAIN / rate / 3600})


if __name__ == "__main__":
    main()
