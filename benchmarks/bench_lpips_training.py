"""What the real LPIPS term costs in stage-1 training: the 64 px photo MQ-VAE with and without it.

Two arms, alternated round by round (A B A B …), on the same batch of photo crops:
  lpips     the generator step of `mqvae_photos_64.yaml` as training runs it before `disc_start`
            (forward, L1 + LPIPS(VGG16) + codebook loss, backward, Adam step)
  no_lpips  the same step with `loss.perceptual_weight=0` (the VGG16 never runs)
Both arms start from the same initial weights and take the same learning rate. Each timed call
is `--steps` optimizer steps. Prints JSON lines: each arm's seconds per step (median, min, max),
steps/s, and the ratio lpips / no_lpips with the range of the per-round ratios.
    python benchmarks/bench_lpips_training.py [--photos DIR] [--repeats N] [--steps N] [--threads T]
The batch is crops of `--photos` (a folder with train/ and val/ photos); without one it is random
images of the same shape (step time does not depend on the pixels), and the output says so.
Without the VGG16 weights (`mvq weights install`) it prints why and exits without timing.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from harness import REPOSITORY, emit, environment, interleaved, ratio, summary

from mvq.losses.stage1 import Stage1Loss
from mvq.models.mqvae import MQVAE
from mvq.training.common import peak_lr
from mvq.training.config import load_training_config
from mvq.storage.network_weights import VGG16, find

CONFIG = Path(REPOSITORY) / "configs" / "stage1" / "mqvae_photos_64.yaml"
DEFAULT_PHOTOS = Path(REPOSITORY).parent / "shared" / "photos"


def photo_batch(config, photos: Path | None) -> tuple[torch.Tensor, str]:
    """`data.batch_size` training crops (seeded), or random images when there are no photos."""
    from mvq.data import build_dataset

    size, resolution = config.data.batch_size, config.model.resolution
    if photos is None:
        return torch.rand(size, 3, resolution, resolution) * 2 - 1, "random images (no photo folder)"
    torch.manual_seed(0)
    dataset = build_dataset(config.data, "train")
    picks = torch.randperm(len(dataset))[:size].tolist()
    return torch.stack([dataset[i]["image"] for i in picks]), f"{size} training crops of {photos}"


def training_step(config, perceptual_weight: float, initial: dict, images: torch.Tensor):
    """A zero-argument callable that takes one generator step, as stage-1 training does before disc_start."""
    model = MQVAE(config.model)
    model.load_state_dict(initial)
    return generator_step(model, dataclasses.replace(config.loss, perceptual_weight=perceptual_weight), config.optim,
                          images)


def generator_step(model, loss_config, optim, images: torch.Tensor):
    """A zero-argument callable: one generator step of `model` (forward, loss, backward, Adam step) on `images`."""
    model.train()
    loss = Stage1Loss(loss_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=peak_lr(optim, images.shape[0], 1),
                                 betas=tuple(optim.betas), weight_decay=optim.weight_decay)

    def step() -> None:
        out = model(images)
        total, _ = loss.generator_loss(images, out.reconstruction, out.codebook_loss, 0, model.last_layer)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=None,
                        help=f"photo folder with train/ and val/ (default: {DEFAULT_PHOTOS} when it exists)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per arm (default: 7)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per timed call (default: 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a 2-core machine shared with other jobs, 2 threads ran "
                             "2x slower at best and 16x at the median, waiting on each other)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if find(VGG16) is None:
        emit({"bench": "stage1_lpips_cost", "skipped": f"no VGG16 weights ({VGG16.filename} or {VGG16.converted}); "
                                                       "run `mvq weights install` first"})
        return
    photos = args.photos or (DEFAULT_PHOTOS if DEFAULT_PHOTOS.is_dir() else None)
    _, config = load_training_config(CONFIG, [f"data.root={photos}"] if photos else [])
    if config.loss.disc_start <= 0:
        raise SystemExit(f"{CONFIG.name} trains its discriminator from step 0; this benchmark times the steps "
                         "before disc_start")
    images, batch_source = photo_batch(config, photos)
    torch.manual_seed(0)
    initial = MQVAE(config.model).state_dict()
    arms = {"lpips": training_step(config, 1.0, initial, images),
            "no_lpips": training_step(config, 0.0, initial, images)}
    emit(environment(config=CONFIG.name, batch=images.shape[0], resolution=images.shape[-1], batch_source=batch_source,
                     steps_per_call=args.steps))

    def steps_of(step):
        return lambda: [step() for _ in range(args.steps)]

    samples = interleaved({name: steps_of(step) for name, step in arms.items()}, args.repeats)
    per_step = 1.0 / args.steps
    record = {"bench": "stage1_lpips_cost", "config": CONFIG.name, "batch": images.shape[0]}
    for name in arms:
        seconds = summary(samples[name], per_step)
        record[f"{name}_s_per_step"] = seconds
        record[f"{name}_steps_per_s"] = 1.0 / seconds["median"]
    record.update(ratio(samples["lpips"], samples["no_lpips"]))
    record["note"] = ("ratio = lpips / no_lpips seconds per step (median of each arm); rounds_min/max: ratios "
                      "of adjacent calls; discriminator idle (before disc_start), as in training")
    emit(record)


if __name__ == "__main__":
    main()
