"""Class-conditional generation on Fashion-MNIST at 16 tokens per image: MQ-VAE + Stackformer vs VQGAN + plain GPT.

Claim checked (3, second half): the autoregressive model over the masked tokenizer's tokens
generates better images than one over a plain VQGAN's tokens, at the same number of tokens.
Every setting comes from settings.yaml (`generation_fashion_mnist`). Per tokenizer:
  1. stage 1 (`mvq train`, real LPIPS in the loss) and export;
  2. `mvq tokenize`-equivalent token stores: training images and held-out test images;
  3. stage 2 (`mvq train`, same steps, width and total depth: the Stackformer's code and position
     layers against a plain GPT with as many layers), export;
  4. stage-2 validation NLL per image (teacher-forced, nats, codes + positions) on the test tokens;
  5. samples per class (seconds per image), FID against the test images (FID Inception, N stated),
     class consistency by a small classifier trained on the training images (its test accuracy
     reported), and a sample grid per tokenizer (one row per class).
Each seed in the settings' `seeds` (or its one `seed`) trains both tokenizers and generators anew.
Writes experiments/results/<study>.json and <study>_<tokenizer>[_seed<S>].png.
    python experiments/claims/generation_fashion_mnist.py [--study NAME] [--settings YAML] [--results DIR] [--work DIR]
`--study` picks a section of settings.yaml (default generation_fashion_mnist); `--settings` and the
folders are for trying the script out with other settings.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (REPOSITORY, RESULTS, SETTINGS, Stopwatch, environment, load_settings,  # noqa: E402
                    stage1_config, train_and_export, use_threads, write_json)

WORK = REPOSITORY / "runs" / "claims"
PACKAGED = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def unpack(root: Path) -> Path:
    """FashionMNIST/raw/ under `root`, unpacked from the Debian package's .gz files (once)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for packed in sorted(PACKAGED.glob("*.gz")):
        target = raw / packed.name[:-3]
        if not target.is_file():
            with gzip.open(packed) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
    return root


def data_section(root: Path, resolution: int, batch_size: int) -> dict:
    return {"dataset": "torchvision", "torchvision_class": "FashionMNIST", "root": str(root),
            "resolution": resolution, "fit": "pad", "batch_size": batch_size, "num_workers": 0}


def subset(dataset, count: int):
    """The first `count` items; keeps `classes` visible to the token store."""
    from torch.utils.data import Subset

    return Subset(dataset, range(min(count, len(dataset))))


def stage2_config(settings: dict, name: str, vae: Path, tokens: Path, val_tokens: Path, seed: int) -> dict:
    model = dict(settings["stage2_model"])
    model["position_layers"] = settings["stage2_position_layers"][name]
    if model["position_layers"] == 0:
        model["code_layers"] = settings["stage2_plain_gpt_code_layers"]
    steps = settings["stage2_steps"]
    return {"stage": 2, "vae": str(vae), "model": model,
            "data": {"tokens": str(tokens), "val_tokens": str(val_tokens), "batch_size": settings["stage2_batch_size"],
                     "num_workers": 0},
            "optim": {"lr": settings["stage2_lr"], "warmup_steps": steps // 20},
            "trainer": {"max_steps": steps, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                        "log_every_n_steps": 20, "enable_progress_bar": False, "enable_model_summary": False},
            "run": {"seed": seed, "image_every_n_steps": 10 ** 9, "checkpoint_every_n_steps": steps}}


def validation_nll(stackformer, store) -> dict:
    """Teacher-forced NLL per image in nats: K × (mean code CE + mean position CE) over the held-out tokens."""
    import torch
    from torch.utils.data import DataLoader

    stackformer.eval()
    k = stackformer.config.num_tokens
    code = position = 0.0
    n = 0
    with torch.no_grad():
        for batch in DataLoader(store, batch_size=500):
            out = stackformer(batch["codes"], batch["positions"], batch["label"])
            b = batch["codes"].shape[0]
            code += float(out.code_loss) * b
            position += float(out.position_loss) * b
            n += b
    code, position = k * code / n, k * position / n
    return {"nll_per_image_nats": code + position, "code_nll_per_image_nats": code,
            "position_nll_per_image_nats": position, "num_images": n}


def features(inception, images_uint8) -> tuple:
    """Mean and covariance of Inception pool features of N×3×R×R uint8 images."""
    import torch

    from mvq.evaluation.frechet import GaussianAccumulator

    accumulator = GaussianAccumulator(inception.feature_dim, "cpu")
    with torch.no_grad():
        for start in range(0, len(images_uint8), 50):
            accumulator.update(inception(images_uint8[start:start + 50])[0])
    return accumulator.mean_and_covariance()


def reference_statistics(inception, test_set, count: int, cache: Path) -> tuple:
    """Inception statistics of the first `count` test images, computed once and kept in `cache` (.npz)."""
    import numpy as np
    import torch

    from mvq.evaluation.image_metrics import to_uint8

    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            return stored["mean"], stored["covariance"]
    images = to_uint8(torch.stack([test_set[i]["image"] for i in range(min(count, len(test_set)))]))
    mean, covariance = features(inception, images)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, mean=mean, covariance=covariance)
    return mean, covariance


def summarize(runs: dict) -> dict:
    """Mean and per-seed values of each headline metric, per tokenizer."""
    keys = ("fid", "class_consistency", "nll_per_image_nats", "seconds_per_image")
    return {name: {key: {"mean": statistics.fmean(r[key] for r in seeds.values()),
                         "values": [r[key] for r in seeds.values()]} for key in keys}
            for name, seeds in runs.items()}


def main() -> None:
    import numpy as np
    import torch

    from mvq.data.build import build_dataset
    from mvq.data.config import DataConfig
    from mvq.data.token_store import TokenStore
    from mvq.demo.classifier import accuracy, predict, train_classifier
    from mvq.evaluation import InceptionV3
    from mvq.evaluation.frechet import frechet_distance
    from mvq.models.sampling import SamplingConfig
    from mvq.models.stackformer import Stackformer
    from mvq.models.tokenizer import load_tokenizer
    from mvq.inference.pipeline import MVQPipeline
    from mvq.inference.tokenizing import tokenize_dataset
    from mvq.visualize import image_grid, save_image

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="generation_fashion_mnist", help="settings.yaml section")
    parser.add_argument("--settings", type=Path, default=SETTINGS)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args()
    study = args.study
    results_dir, work = args.results, args.work / ("generation" if study == "generation_fashion_mnist" else study)
    out = results_dir / f"{study}.json"
    results_dir.mkdir(parents=True, exist_ok=True)
    all_settings = load_settings(args.settings)
    settings = all_settings[study]
    seeds = settings.get("seeds", [settings.get("seed", 0)])
    started = time.perf_counter()
    use_threads(all_settings["threads"])
    clock = Stopwatch()
    root = unpack(REPOSITORY / settings["data_root"])
    resolution = settings["stage1_model"]["resolution"]
    config = DataConfig(**data_section(root, resolution, 64))
    train_set, test_set = build_dataset(config, "train", augment=False), build_dataset(config, "val")

    with clock.part("classifier"):
        torch.manual_seed(seeds[0])
        classifier, _ = train_classifier(subset(train_set, settings["tokenize_train_images"]), subset(test_set, 10),
                                         10, epochs=settings["classifier_epochs"], progress=False)
        classifier_accuracy = accuracy(classifier, test_set)
    print(f"classifier test accuracy {classifier_accuracy:.4f}", flush=True)

    inception = InceptionV3().eval()
    count = settings["fid_reference_images"]
    with clock.part("fid_reference"):
        cache = args.work / f"fashion_mnist_test_{resolution}px_first{count}_inception.npz"
        reference_stats = reference_statistics(inception, test_set, count, cache)

    results: dict = {}
    wanted = [c for c in range(10) for _ in range(settings["samples_per_class"])]
    runs = [(seed, name, arm) for seed in seeds for name, arm in settings["tokenizers"].items()]
    for seed, name, arm in runs:
        print(f"== {name} seed {seed}", flush=True)
        arm_clock = Stopwatch()
        folder = work / f"{name}_seed{seed}" if len(seeds) > 1 else work / name
        grid_file = f"{study}_{name}_seed{seed}.png" if len(seeds) > 1 else f"{study}_{name}.png"
        with arm_clock.part("stage1"):
            model = {**settings["stage1_model"], **arm}
            stage1 = stage1_config(model, data_section(root, resolution, settings["stage1_batch_size"]),
                                   steps=settings["stage1_steps"], lr=settings["stage1_lr"],
                                   warmup_steps=settings["stage1_steps"] // 20,
                                   perceptual_weight=settings["perceptual_weight"], disc_start=settings["disc_start"],
                                   seed=seed)
            vae_dir = train_and_export(stage1, folder / "stage1", folder / "vae")
        vae = load_tokenizer(vae_dir).eval()
        with arm_clock.part("tokenize"):
            for split, dataset, count in (("train", train_set, settings["tokenize_train_images"]),
                                          ("test", test_set, settings["val_images"])):
                store = folder / f"tokens_{split}"
                if store.exists():
                    shutil.rmtree(store)
                tokenize_dataset(vae, subset(dataset, count), store, batch_size=256, rank=0, world_size=1,
                                 progress=False)
        with arm_clock.part("stage2"):
            gpt_dir = train_and_export(stage2_config(settings, name, vae_dir, folder / "tokens_train",
                                                     folder / "tokens_test", seed),
                                       folder / "stage2", folder / "stage2_export")
        stackformer = Stackformer.from_pretrained(gpt_dir).eval()
        nll = validation_nll(stackformer, TokenStore(folder / "tokens_test"))
        pipe = MVQPipeline(stackformer, vae)
        sampling = SamplingConfig(temperature=settings["sampling"]["temperature"],
                                  top_k=settings["sampling"]["top_k_code"], top_p=settings["sampling"]["top_p_code"])
        start = time.perf_counter()
        samples = pipe(labels=wanted, seed=seed, batch_size=100, sampling=sampling)
        seconds_per_image = (time.perf_counter() - start) / len(samples)
        sample_tensor = torch.from_numpy(samples).permute(0, 3, 1, 2).contiguous()
        with arm_clock.part("fid"):
            fid = frechet_distance(*reference_stats, *features(inception, sample_tensor))
        predicted = predict(classifier, sample_tensor.float() / 127.5 - 1)
        consistency = float((predicted == torch.tensor(wanted)).float().mean())
        per_class = settings["samples_per_class"]
        grid = [sample_tensor[c * per_class: c * per_class + 10].float() / 127.5 - 1 for c in range(10)]
        save_image(image_grid(grid), results_dir / grid_file)
        results.setdefault(name, {})[str(seed)] = {
            "tokenizer": model, "stackformer": stackformer.config.__dict__,
            "stackformer_parameters": sum(p.numel() for p in stackformer.parameters()),
            "fid": fid, "class_consistency": consistency, **nll,
            "seconds_per_image": seconds_per_image, "num_samples": len(samples), "seconds": arm_clock.seconds,
            "grid": grid_file,
        }
        np.savez_compressed(folder / "samples.npz", arr_0=samples)
        print(f"   {results[name][str(seed)]}", flush=True)
        write_json(out, {"runs": results})  # kept after every arm, so an interrupted study keeps what ran
    write_json(out, {
        "what": "class-conditional Fashion-MNIST (32 px, 16 tokens per image): MQ-VAE f4 (8x8, keep 25%) + "
                "Stackformer vs VQGAN f8 (4x4) + plain GPT of equal width and total depth, same stage-2 steps",
        "settings": settings, "threads": all_settings["threads"],
        "fid_note": f"FID of N={len(wanted)} samples ({settings['samples_per_class']} per class) per arm and seed "
                    f"against the first {count} test images, 2048-d FID Inception features; small N biases FID "
                    "upwards, so compare the two arms with each other only",
        "classifier_test_accuracy": classifier_accuracy,
        "classes": list(CLASSES),
        "command": "python experiments/claims/generation_fashion_mnist.py"
                   + ("" if study == "generation_fashion_mnist" else f" --study {study}"),
        "environment": environment(), "runs": results, "summary": summarize(results),
        "wall_seconds": {**clock.seconds, "total": round(time.perf_counter() - started, 1)},
    })


if __name__ == "__main__":
    main()
