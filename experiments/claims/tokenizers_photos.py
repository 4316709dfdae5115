"""Tokenizers on real photographs: the MQ-VAE, its three ablations and two VQGANs, two seeds each.

Claims checked: (1) adaptive mask beats random (Table 6); (2) direction-constrained de-mask
attention and its sqrt mask update help (Table 7); (3) at 64 tokens per image the MQ-VAE over
a 16×16 grid beats a VQGAN over an 8×8 grid (the VQGAN f4, 256 tokens, is the upper bound).

Every setting comes from settings.yaml (`tokenizers_photos`). Training crops are cut once, to
a folder, so that every arm sees exactly the same images in the same order (the sampler is
seeded by the run seed); evaluation is on the validation photos' fixed crops. Per arm and
seed: train, export, then rFID (FID Inception), LPIPS (VGG16), PSNR, SSIM, codebook usage.
Writes experiments/results/tokenizers_photos.json and tokenizers_photos.png.
    python experiments/claims/tokenizers_photos.py [--arms A B ...] [--seeds 0 1] [--study NAME]
Arms already in the JSON are kept unless named again (a run can be continued). `--study` picks another
section of settings.yaml (e.g. tokenizers_photos_longer); its results are named after it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (REPOSITORY, RESULTS, Stopwatch, environment, load_settings, read_json,  # noqa: E402
                    stage1_config, train_and_export, use_threads, write_json)

WORK = REPOSITORY / "runs" / "claims" / "tokenizers"
OUT = RESULTS / "tokenizers_photos.json"
FIGURE = RESULTS / "tokenizers_photos.png"
METRICS = ("rfid", "lpips", "psnr", "ssim", "codebook_usage_percent")


def cut_crops(settings: dict) -> Path:
    """Write the fixed training crops and the validation crops as PNGs (once); returns their folder."""
    from mvq.data.photos import photo_crops_dataset
    from mvq.evaluation.image_metrics import to_uint8
    from PIL import Image

    root = WORK / "crops"
    photos = REPOSITORY / settings["photos"]
    done = root / "complete"
    if done.is_file():
        return root
    for split, crops, seed in (("train", settings["train_crops_per_photo"], settings["crop_seed"]),
                               ("val", settings["val_crops_per_photo"], 0)):
        dataset = photo_crops_dataset(photos, split, settings["model"]["resolution"], False, crops_per_image=crops,
                                      scale=tuple(settings["crop_scale"]), seed=seed)
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(len(dataset)):
            pixels = to_uint8(dataset[i]["image"][None])[0].permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(root / split / f"{i:05d}.png")
    done.write_text("ok\n")
    return root


def arm_config(settings: dict, arm: str, seed: int, crops: Path) -> dict:
    model = {**settings["model"], **settings["arms"][arm]}
    data = {"dataset": "folder", "root": str(crops), "resolution": model["resolution"], "horizontal_flip": False,
            "batch_size": settings["batch_size"], "num_workers": 0}
    return stage1_config(model, data, steps=settings["steps"], lr=settings["lr"], warmup_steps=settings["warmup_steps"],
                         perceptual_weight=settings["perceptual_weight"], disc_start=settings["disc_start"], seed=seed)


def validation_set(crops: Path, resolution: int):
    from mvq.data.layouts import folder_dataset

    return folder_dataset(crops, resolution, False, augment=False)


def validation_images(crops: Path, resolution: int):
    import torch

    dataset = validation_set(crops, resolution)
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def inception_statistics(inception, images) -> tuple:
    """Mean and covariance of the Inception pool features of images in [-1, 1] (uint8-quantised first)."""
    import torch

    from mvq.evaluation.frechet import GaussianAccumulator
    from mvq.evaluation.image_metrics import to_uint8

    accumulator = GaussianAccumulator(inception.feature_dim, "cpu")
    with torch.no_grad():
        for start in range(0, len(images), 24):
            accumulator.update(inception(to_uint8(images[start:start + 24]))[0])
    return accumulator.mean_and_covariance()


def evaluate(folder: Path, crops: Path, inception, lpips, originals: tuple) -> dict:
    """`evaluate_reconstruction`'s metrics; rFID against the originals' statistics computed once for all arms."""
    import torch

    from mvq.evaluation import evaluate_reconstruction
    from mvq.evaluation.frechet import frechet_distance
    from mvq.models.tokenizer import load_tokenizer

    model = load_tokenizer(folder).eval()
    metrics = evaluate_reconstruction(model, validation_set(crops, model.config.resolution), lpips=lpips,
                                      batch_size=24)
    images = validation_images(crops, model.config.resolution)
    with torch.no_grad():
        reconstructions = torch.cat([model(images[i:i + 24]).reconstruction.float().clamp(-1, 1)
                                     for i in range(0, len(images), 24)])
    metrics["rfid"] = frechet_distance(*originals, *inception_statistics(inception, reconstructions))
    return metrics


def summarize(results: dict) -> dict:
    """Mean and spread over seeds of each metric, per arm."""
    table = {}
    for arm, seeds in results.items():
        table[arm] = {}
        for metric in METRICS:
            values = [s["metrics"][metric] for s in seeds.values() if s["metrics"].get(metric) is not None]
            if values:
                table[arm][metric] = {"mean": statistics.fmean(values), "values": values}
        table[arm]["train_seconds"] = statistics.fmean(s["seconds"]["train"] for s in seeds.values())
    return table


def figure(settings: dict, crops: Path, seed: int, arms: list[str]) -> None:
    """Originals, then each arm's reconstructions (and, for MQ-VAEs, keep-mask overlays), one row each."""
    import torch

    from mvq.models.tokenizer import load_tokenizer
    from mvq.visualize import image_grid, keep_mask_overlay, save_image

    dataset = validation_set(crops, settings["model"]["resolution"])
    step = max(1, len(dataset) // settings["figure_crops"])
    images = torch.stack([dataset[i * step]["image"] for i in range(settings["figure_crops"])])
    rows, labels = [images], ["originals"]
    with torch.no_grad():
        for arm in arms:
            folder = WORK / f"{arm}_seed{seed}" / "export"
            if not folder.is_dir():
                continue
            out = load_tokenizer(folder).eval()(images)
            rows.append(out.reconstruction.clamp(-1, 1))
            labels.append(arm)
            if not bool(out.keep_mask.all()):
                rows.append(keep_mask_overlay(images, out.keep_mask))
                labels.append(f"{arm} keep-mask")
    save_image(image_grid(rows), FIGURE)
    FIGURE.with_suffix(".rows.txt").write_text("\n".join(labels) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=None, help="arms to run (default: all in settings.yaml)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: settings.yaml's)")
    parser.add_argument("--study", default="tokenizers_photos", help="settings.yaml section (default: tokenizers_photos)")
    args = parser.parse_args()
    all_settings = load_settings()
    settings = all_settings[args.study]
    global WORK, OUT, FIGURE
    WORK, OUT, FIGURE = WORK.parent / args.study, RESULTS / f"{args.study}.json", RESULTS / f"{args.study}.png"
    use_threads(all_settings["threads"])
    from mvq.evaluation import InceptionV3
    from mvq.losses.perceptual import LPIPS

    arms = args.arms or list(settings["arms"])
    seeds = args.seeds or settings["seeds"]
    previous = read_json(OUT) if OUT.is_file() else {}
    results: dict = previous.get("runs", {})
    clock = Stopwatch()
    with clock.part("cut_crops"):
        crops = cut_crops(settings)
    inception, lpips = InceptionV3().eval(), LPIPS(net="vgg").eval()
    with clock.part("originals_inception"):
        originals = inception_statistics(inception, validation_images(crops, settings["model"]["resolution"]))
    for seed in seeds:
        for arm in arms:
            name = f"{arm}_seed{seed}"
            print(f"== {name}", flush=True)
            arm_clock = Stopwatch()
            with arm_clock.part("train"):
                folder = train_and_export(arm_config(settings, arm, seed, crops),
                                          WORK / name / "run", WORK / name / "export")
            with arm_clock.part("evaluate"):
                metrics = evaluate(folder, crops, inception, lpips, originals)
            results.setdefault(arm, {})[str(seed)] = {"metrics": metrics, "seconds": arm_clock.seconds,
                                                     "model": {**settings["model"], **settings["arms"][arm]}}
            print(f"   {arm_clock.seconds} {({k: metrics.get(k) for k in METRICS})}", flush=True)
            if seed == settings["seeds"][0]:  # the figure shows the first seed's models
                with clock.part("figure"):
                    figure(settings, crops, seed, list(settings["arms"]))
            # Written after every arm, so an interrupted study keeps (and reports) what ran.
            wall = {**previous.get("wall_seconds", {}), **clock.seconds,
                    "arms_total": round(sum(s["seconds"]["train"] + s["seconds"]["evaluate"]
                                            for seeds_ in results.values() for s in seeds_.values()), 1)}
            write_json(OUT, {
                "what": "64 px tokenizers trained on the same fixed crops of 28 photographs (real LPIPS-VGG16 in "
                        "the loss, no discriminator), evaluated on the 72 fixed crops of the 9 validation photographs",
                "settings": settings, "threads": all_settings["threads"],
                "rfid_note": "rFID over N=72 reconstructions vs their 72 originals (2048-d Inception pool features, "
                             "so the covariances are rank deficient): compare arms with each other only",
                "command": "python experiments/claims/tokenizers_photos.py"
                           + ("" if args.study == "tokenizers_photos" else f" --study {args.study}"),
                "environment": environment(), "wall_seconds": wall, "runs": results, "summary": summarize(results),
                "figure": {"file": FIGURE.name, "seed": settings["seeds"][0],
                           "rows": FIGURE.with_suffix(".rows.txt").read_text().split("\n")[:-1]
                           if FIGURE.with_suffix(".rows.txt").is_file() else []},
            })

if __name__ == "__main__":
    main()
