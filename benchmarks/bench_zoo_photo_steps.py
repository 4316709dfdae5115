"""What a training step costs for each photo tokenizer the zoo compares: is "equal steps" equal compute?

Arms, alternated round by round (A B C D A B C D …), on the same batch of 8 photo crops (64 px):
  photos-64        configs/zoo/mqvae_photos_64.yaml: MQ-VAE, 16×16 grid, K = 64
  photos-64-any-k  configs/zoo/mqvae_photos_64_any_k.yaml: the same, a K per image from 16 to 256
  vqgan-f8         configs/zoo/vqgan_photos_64_f8.yaml: VQGAN, 8×8 grid (64 tokens)
  vqgan-f4         configs/zoo/vqgan_photos_64_f4.yaml: VQGAN, 16×16 grid (256 tokens)
Each timed call is `--steps` generator steps as training takes them (forward, L1 + LPIPS-VGG +
codebook loss, backward, Adam step; these configs build no discriminator). Prints JSON lines: each
arm's seconds per step (median, min, max) and its ratio to photos-64 with the range of the per-round
ratios.
    python benchmarks/bench_zoo_photo_steps.py [--photos DIR] [--repeats N] [--steps N] [--threads T]
Without the VGG16 weights (`mvq weights install`) it prints why and exits without timing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_lpips_training import DEFAULT_PHOTOS, generator_step, photo_batch
from harness import REPOSITORY, emit, environment, interleaved, ratio, summary

from mvq.models.tokenizer import build_tokenizer
from mvq.storage.network_weights import VGG16, find
from mvq.training.config import load_training_config

ZOO_CONFIGS = Path(REPOSITORY) / "configs" / "zoo"
ARMS = {"photos-64": "mqvae_photos_64.yaml", "photos-64-any-k": "mqvae_photos_64_any_k.yaml",
        "vqgan-f8": "vqgan_photos_64_f8.yaml", "vqgan-f4": "vqgan_photos_64_f4.yaml"}


def training_step(config, images: torch.Tensor):
    """A zero-argument callable that takes one generator step of `config`'s tokenizer on `images`."""
    torch.manual_seed(0)
    return generator_step(build_tokenizer(config.model), config.loss, config.optim, images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None,
                        help=f"photo folder with train/ and val/ (default: {DEFAULT_PHOTOS} when it exists)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per arm (default: 7)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per timed call (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as the zoo runs train)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if find(VGG16) is None:
        emit({"bench": "zoo_photo_steps", "skipped": f"no VGG16 weights ({VGG16.filename} or {VGG16.converted}); "
                                                     "run `mvq weights install` first"})
        return
    photos = args.photos or (DEFAULT_PHOTOS if DEFAULT_PHOTOS.is_dir() else None)
    overrides = [f"data.root={photos}"] if photos else []
    configs = {name: load_training_config(ZOO_CONFIGS / file, overrides)[1] for name, file in ARMS.items()}
    if any(config.loss.disc_start is not None for config in configs.values()):
        raise SystemExit("a zoo photo config builds a discriminator; this benchmark times generator steps alone")
    images, batch_source = photo_batch(configs["photos-64"], photos)
    arms = {name: training_step(config, images) for name, config in configs.items()}
    emit(environment(configs=list(ARMS.values()), batch=images.shape[0], resolution=images.shape[-1],
                     batch_source=batch_source, steps_per_call=args.steps))

    def steps_of(step):
        return lambda: [step() for _ in range(args.steps)]

    samples = interleaved({name: steps_of(step) for name, step in arms.items()}, args.repeats)
    per_step = 1.0 / args.steps
    for name in arms:
        record = {"bench": "zoo_photo_steps", "arm": name, "config": ARMS[name],
                  "parameters": sum(p.numel() for p in build_tokenizer(configs[name].model).parameters()),
                  "s_per_step": summary(samples[name], per_step)}
        if name != "photos-64":
            record.update(ratio(samples[name], samples["photos-64"]))
            record["note"] = f"ratio = {name} / photos-64 seconds per step (median of each arm)"
        emit(record)


if __name__ == "__main__":
    main()
