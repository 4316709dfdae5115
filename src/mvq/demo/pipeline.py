"""The demo's steps, one function each, and `run_demo` that runs them in order."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mvq.config import build_dataclass, load_yaml

DEMO_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
SAMPLES_PER_CLASS = 16
# Classifier-free guidance for the class-conditional samples (the demo Stackformer is trained with
# label dropout). Measured on 128 samples: 0.54 of them show the asked-for shape without guidance,
# 0.63-0.69 with a scale of 2-4.
GUIDANCE_SCALE = 3.0

# Every field metrics.json carries (all finite numbers).
DEMO_METRICS = [
    "recon_psnr", "recon_l1", "keep_ratio", "kept_foreground_share", "foreground_share", "keep_focus_ratio",
    "codebook_usage", "codebook_perplexity", "stage2_val_loss", "stage2_val_code_loss",
    "stage2_val_position_loss", "stage2_marginal_baseline_loss", "classifier_accuracy", "class_consistency",
    "num_classes", "num_samples", "seconds_stage1", "seconds_tokenize", "seconds_stage2", "seconds_classifier",
    "seconds_evaluate", "seconds_total",
]

# Shorter settings for `--fast` (the test suite runs these).
FAST_STAGE1 = ["trainer.max_steps=20", "trainer.val_check_interval=10", "data.num_train=320", "data.num_val=64",
               "data.batch_size=16", "run.image_every_n_steps=10", "run.checkpoint_every_n_steps=10"]
FAST_STAGE2 = ["trainer.max_steps=20", "trainer.val_check_interval=10", "run.image_every_n_steps=10",
               "run.checkpoint_every_n_steps=10"]


def _data_sets(run_dir: Path):
    """Train and held-out datasets of the stage-1 run, without random augmentation."""
    from mvq.data import build_dataset
    from mvq.data.config import DataConfig

    config = build_dataclass(DataConfig, load_yaml(run_dir / "config.yaml")["data"], "data")
    return build_dataset(config, "train", augment=False), build_dataset(config, "val", augment=False)


def _stack(dataset, key: str, limit: int | None = None) -> torch.Tensor:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    return torch.stack([torch.as_tensor(dataset[i][key]) for i in range(n)])


@torch.no_grad()
def evaluate_reconstruction(vae, val_set, batch_size: int = 128) -> tuple[dict, dict]:
    """PSNR / L1 on held-out images, codebook usage, and where the keep-mask falls (synthetic masks)."""
    from mvq.evaluation import codebook_usage_from_counts

    images = _stack(val_set, "image")
    has_masks = "mask" in val_set[0]
    masks = _stack(val_set, "mask") if has_masks else None
    g = vae.config.grid_size
    cell = vae.config.resolution // g
    counts = torch.zeros(vae.config.codebook_size)
    psnrs, l1s, kept_fg, kept_total, fg_share = [], [], 0.0, 0.0, []
    for start in range(0, len(images), batch_size):
        x = images[start: start + batch_size]
        out = vae(x)
        rec = out.reconstruction.clamp(-1, 1)
        mse = ((rec - x) ** 2).flatten(1).mean(1)
        psnrs.append(10 * torch.log10(4.0 / mse.clamp_min(1e-10)))
        l1s.append((rec - x).abs().flatten(1).mean(1))
        counts += torch.bincount(out.codes.flatten(), minlength=vae.config.codebook_size).float()
        if masks is not None:
            m = masks[start: start + batch_size]
            touches = F.max_pool2d(m, cell).squeeze(1) > 0  # B×g×g: a cell touching any shape pixel
            kept_fg += float((touches & out.keep_mask).sum())
            kept_total += float(out.keep_mask.sum())
            fg_share.append(m.flatten(1).mean(1))
    usage = codebook_usage_from_counts(counts)
    metrics = {"recon_psnr": float(torch.cat(psnrs).mean()), "recon_l1": float(torch.cat(l1s).mean()),
               "keep_ratio": vae.config.num_tokens / vae.config.num_cells,
               "codebook_usage": usage["usage_percent"], "codebook_perplexity": usage["perplexity"]}
    if masks is not None:
        share = float(torch.cat(fg_share).mean())
        kept_share = kept_fg / max(kept_total, 1.0)
        metrics.update(kept_foreground_share=kept_share, foreground_share=share,
                       keep_focus_ratio=kept_share / max(share, 1e-8))
    return metrics, {"images": images}


@torch.no_grad()
def evaluate_stackformer(stackformer, train_store, val_store, batch_size: int = 256) -> dict:
    """Teacher-forced validation loss, and the loss of predicting from marginal frequencies instead."""
    from torch.utils.data import DataLoader

    c = stackformer.config
    totals = {"loss": 0.0, "code_loss": 0.0, "position_loss": 0.0}
    n = 0
    for batch in DataLoader(val_store, batch_size=batch_size):
        labels = batch["label"] if c.num_classes else None
        out = stackformer(batch["codes"], batch["positions"], labels)
        b = batch["codes"].shape[0]
        for key in totals:
            totals[key] += float(getattr(out, key)) * b
        n += b
    codes_train, positions_train = _store_columns(train_store, "codes", "positions")
    codes_val, positions_val = _store_columns(val_store, "codes", "positions")

    def marginal_cross_entropy(train: torch.Tensor, val: torch.Tensor, size: int) -> float:
        p = (torch.bincount(train.flatten(), minlength=size).double() + 1) / (train.numel() + size)
        return float(-p.log()[val.flatten()].mean())

    baseline = (marginal_cross_entropy(codes_train, codes_val, c.codebook_size)
                + c.position_loss_weight * marginal_cross_entropy(positions_train, positions_val,
                                                                 c.grid_size ** 2))
    return {"stage2_val_loss": totals["loss"] / n, "stage2_val_code_loss": totals["code_loss"] / n,
            "stage2_val_position_loss": totals["position_loss"] / n, "stage2_marginal_baseline_loss": baseline}


def _store_columns(store, *names: str) -> list[torch.Tensor]:
    """Whole columns of a token store (all parts concatenated) as long tensors."""
    parts = list(store.arrays())
    return [torch.from_numpy(np.concatenate([np.asarray(p[name]) for p in parts]).astype(np.int64))
            for name in names]


def save_enlarged(grid: torch.Tensor, path: Path, resolution: int) -> None:
    """Save a grid of small images enlarged (nearest neighbour) to about 64 px per image, so the page shows them."""
    from mvq.visualize import save_image

    scale = max(1, 64 // resolution)
    save_image(grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2), path)


def _timed(timings: dict, name: str):
    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = time.perf_counter() - self.start

    return _Timer()


def run_demo(out: str | Path = "demo-output", data: str | None = None, fast: bool = False, seed: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the whole pipeline and write the report into `out`; returns the metrics.

    `seed` overrides the demo configs' `run.seed` (and seeds sampling); by default their own seeds are used.
    """
    from mvq.data.token_store import TokenStore, tokenize_dataset
    from mvq.demo.classifier import predict, train_classifier
    from mvq.demo.report import plot_curves, read_scalars, write_index
    from mvq.models.mqvae import MQVAE
    from mvq.models.stackformer import Stackformer
    from mvq.pipeline import MVQPipeline
    from mvq.training.run import export, train
    from mvq.visualize import image_grid, reconstruction_rows

    out = Path(out)
    for name in ["runs", "tokens", "mqvae", "stackformer", "figures"]:  # the demo regenerates its outputs
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    seed_overrides = [] if seed is None else [f"run.seed={seed}"]
    sample_seed = 0 if seed is None else seed
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"\n== mvq demo: {message}", flush=True)

    say("stage 1 — training the MQ-VAE")
    with _timed(timings, "seconds_stage1"):
        run1 = train(str(DEMO_CONFIGS / "mqvae_shapes.yaml"), [*seed_overrides, *(FAST_STAGE1 if fast else [])],
                     run_dir=str(out / "runs" / "mqvae"), data_path=data)
        export(run1, out / "mqvae")
    vae = MQVAE.from_pretrained(out / "mqvae")
    train_set, val_set = _data_sets(run1)

    say("tokenizing the images")
    with _timed(timings, "seconds_tokenize"):
        for split, dataset in [("train", train_set), ("val", val_set)]:
            tokenize_dataset(vae, dataset, out / "tokens" / split, batch_size=256, rank=0, world_size=1,
                             source={"demo": split}, progress=progress)
    (labels,) = _store_columns(TokenStore(out / "tokens" / "train"), "labels")
    num_classes = int(labels.max()) + 1 if int(labels.min()) >= 0 else 0

    say("stage 2 — training the Stackformer")
    with _timed(timings, "seconds_stage2"):
        run2 = train(str(DEMO_CONFIGS / "stackformer_shapes.yaml"),
                     [f"vae={out / 'mqvae'}", f"data.tokens={out / 'tokens' / 'train'}",
                      f"data.val_tokens={out / 'tokens' / 'val'}",
                      *seed_overrides, *(FAST_STAGE2 if fast else [])],
                     run_dir=str(out / "runs" / "stackformer"))
        export(run2, out / "stackformer")

    classifier = None
    metrics: dict[str, Any] = {"num_classes": num_classes}
    if num_classes:
        say("training the shape classifier (checks class-conditional samples)")
        with _timed(timings, "seconds_classifier"):
            classifier, metrics["classifier_accuracy"] = train_classifier(
                train_set, val_set, num_classes, epochs=1 if fast else 3, progress=progress,
                max_items=256 if fast else None)
    say("evaluating: reconstructions, samples, losses")
    figures = out / "figures"
    with _timed(timings, "seconds_evaluate"):
        recon_metrics, held_out = evaluate_reconstruction(vae, val_set)
        metrics.update(recon_metrics)
        rows = reconstruction_rows(vae, held_out["images"][:12])
        save_enlarged(image_grid(rows), figures / "reconstructions.png", vae.config.resolution)

        stackformer = Stackformer.from_pretrained(out / "stackformer")
        metrics.update(evaluate_stackformer(stackformer, TokenStore(out / "tokens" / "train"),
                                            TokenStore(out / "tokens" / "val")))
        pipeline = MVQPipeline(stackformer, vae)
        per_class = 4 if fast else SAMPLES_PER_CLASS
        if num_classes:
            wanted = [c for c in range(num_classes) for _ in range(per_class)]
            samples = pipeline(labels=wanted, seed=sample_seed, batch_size=64, cfg_scale=GUIDANCE_SCALE)
        else:
            wanted = None
            samples = pipeline(n=4 * per_class, seed=sample_seed, batch_size=64)
        metrics["num_samples"] = len(samples)
        sample_tensor = torch.from_numpy(samples).permute(0, 3, 1, 2).float() / 127.5 - 1
        n_rows = max(num_classes, 4)
        save_enlarged(image_grid(list(sample_tensor.reshape(n_rows, -1, *sample_tensor.shape[1:]))),
                      figures / "samples.png", vae.config.resolution)
        np.savez_compressed(out / "samples.npz", arr_0=samples)
        if classifier is not None:
            predicted = predict(classifier, sample_tensor)
            metrics["class_consistency"] = float((predicted == torch.tensor(wanted)).float().mean())

        s1 = read_scalars(run1 / "logs")
        s2 = read_scalars(run2 / "logs")
        plot_curves(s1, ["train/l1_loss", "val/rec_loss"], "MQ-VAE: L1 reconstruction loss",
                    figures / "stage1_loss.png")
        plot_curves(s2, ["train/code_loss", "train/position_loss", "val/code_loss", "val/position_loss"],
                    "Stackformer: code and position losses", figures / "stage2_loss.png")
    timings["seconds_total"] = time.perf_counter() - start
    metrics.update(timings)
    for key in DEMO_METRICS:  # e.g. no classifier on class-less user data: report NaN, never leave a gap
        metrics.setdefault(key, float("nan"))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    checks = quality_checks(metrics)
    sections = [
        {"title": "Reconstructions", "image": "figures/reconstructions.png",
         "text": f"Rows: held-out inputs; reconstructions from {vae.config.num_tokens} of {vae.config.num_cells} "
                 "cells; the keep-mask (masked cells darkened); the mask module's importance scores (bright = "
                 "important)."},
        {"title": "Samples", "image": "figures/samples.png",
         "text": (f"One row per class, sampled by the class-conditional Stackformer (classifier-free guidance "
                  f"scale {GUIDANCE_SCALE}) and decoded by the MQ-VAE."
                  if num_classes else "Unconditional samples of the Stackformer, decoded by the MQ-VAE.")},
        {"title": "MQ-VAE training", "image": "figures/stage1_loss.png",
         "text": "L1 reconstruction loss on training batches and on held-out images."},
        {"title": "Stackformer training", "image": "figures/stage2_loss.png",
         "text": "Cross-entropy of the next code and of its position, on training batches and held-out tokens."},
    ]
    write_index(out, "mvq demo: masked vector quantization on synthetic shapes", sections, metrics, checks)
    say(f"done in {timings['seconds_total']:.0f} s — open {out / 'index.html'}")
    return metrics


def quality_checks(metrics: dict) -> list[dict]:
    """The demo's quality targets, each with its value and whether it is met."""
    def check(name: str, value: float, target: str, passed: bool) -> dict:
        return {"name": name, "value": value, "target": target, "passed": bool(passed) and math.isfinite(value)}

    m = metrics
    return [
        check("reconstruction PSNR (dB), held-out", m["recon_psnr"], "≥ 24", m["recon_psnr"] >= 24),
        check("keep-mask focus (kept-on-shape share ÷ shape share)", m["keep_focus_ratio"], "≥ 1.5",
              m["keep_focus_ratio"] >= 1.5),
        check("class consistency of samples", m["class_consistency"], "≥ 0.6", m["class_consistency"] >= 0.6),
        check("stage-2 val loss − marginal baseline", m["stage2_val_loss"] - m["stage2_marginal_baseline_loss"],
              "< 0", m["stage2_val_loss"] < m["stage2_marginal_baseline_loss"]),
    ]
