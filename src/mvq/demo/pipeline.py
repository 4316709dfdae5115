"""The demo's stages, one function each, and `run_demo` that runs them in order.

The output folder is the demo's own: it must be new, empty, or made by an earlier demo (it
holds the marker file `.mvq-demo`). Only then are that earlier demo's outputs replaced;
nothing else in the folder is touched, and a folder the demo did not make is refused.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mvq.storage.atomic import atomic_write, atomic_write_text
from mvq.config import build_dataclass, load_yaml
from mvq.data import build_dataset
from mvq.data.config import DataConfig
from mvq.data.token_store import TokenStore
from mvq.demo.classifier import predict, train_classifier
from mvq.demo.report import plot_curves, read_scalars, write_index
from mvq.errors import UserError
from mvq.evaluation import evaluate_reconstruction
from mvq.evaluation.image_metrics import from_uint8_hwc, to_uint8_hwc
from mvq.models.card import EXAMPLES_DIR, ModelCard
from mvq.models.mqvae import MQVAE
from mvq.models.sampling import SamplingConfig
from mvq.models.stackformer import Stackformer
from mvq.inference.pipeline import MVQPipeline
from mvq.inference.tokenizing import tokenize_dataset
from mvq.training.run import export, train
from mvq.visualize import completion_pictures, fit_scale, labelled_figure, reconstruction_rows, save_figure

DEMO_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
MARKER = ".mvq-demo"
DEMO_OUTPUTS = ["runs", "tokens", "mqvae", "stackformer", "figures", "samples.npz", "metrics.json", "index.html"]
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


# ----------------------------------------------------------------------------- output folder

def prepare_output_folder(out: str | Path, data: str | None = None) -> Path:
    """Check the inputs, then make `out` the demo's folder: new, empty, or an earlier demo's (marker).

    Refuses (UserError) before anything is written or deleted; in an earlier demo's folder
    only that demo's outputs (`DEMO_OUTPUTS`) are removed.
    """
    if data is not None and not Path(data).is_dir():
        raise UserError(f"--data {data}: no such folder of images")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the demo's outputs")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"--out {out} is not empty and was not made by mvq demo; choose a new or empty folder "
                            "(the demo never deletes what it did not write)")
        for name in DEMO_OUTPUTS:  # an earlier demo's outputs: replaced by this run
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER,
                      "written by mvq demo: its outputs in this folder are replaced by the next demo run\n")
    return out


# ----------------------------------------------------------------------------- stages

def _data_sets(run_dir: Path):
    """Train and held-out datasets of the stage-1 run, without random augmentation."""
    config = build_dataclass(DataConfig, load_yaml(run_dir / "config.yaml")["data"], "data")
    return build_dataset(config, "train", augment=False), build_dataset(config, "val", augment=False)


def train_tokenizer(out: Path, data: str | None, overrides: list[str]) -> Path:
    """Stage 1: train the demo MQ-VAE and export it to out/mqvae; returns the run folder."""
    run = train(str(DEMO_CONFIGS / "mqvae_shapes.yaml"), overrides, run_dir=str(out / "runs" / "mqvae"),
                data_path=data)
    export(run, out / "mqvae")
    return run


def tokenize_splits(out: Path, vae, datasets: dict, progress: bool) -> int:
    """Token stores out/tokens/{train,val}; returns the number of classes (0: unlabelled data)."""
    for split, dataset in datasets.items():
        tokenize_dataset(vae, dataset, out / "tokens" / split, batch_size=256, rank=0, world_size=1,
                         source={"demo": split}, progress=progress)
    (labels,) = _store_columns(TokenStore(out / "tokens" / "train"), "labels")
    return int(labels.max()) + 1 if int(labels.min()) >= 0 else 0


def train_generator(out: Path, overrides: list[str]) -> Path:
    """Stage 2: train the demo Stackformer on the token stores and export it to out/stackformer."""
    run = train(str(DEMO_CONFIGS / "stackformer_shapes.yaml"),
                [f"vae={out / 'mqvae'}", f"data.tokens={out / 'tokens' / 'train'}",
                 f"data.val_tokens={out / 'tokens' / 'val'}", *overrides],
                run_dir=str(out / "runs" / "stackformer"))
    export(run, out / "stackformer")
    return run


def evaluate_tokenizer(vae, val_set, figures: Path) -> dict:
    """Held-out reconstruction metrics (the library's evaluation), keep-mask focus, and the figure.

    `recon_psnr` (dB) and `recon_l1` (mean absolute difference on the [-1, 1] scale) compare inputs
    and reconstructions as 8-bit images, as `evaluate_reconstruction` (and `mvq eval`) measure them.
    """
    recon = evaluate_reconstruction(vae, val_set, batch_size=128)
    metrics = {"recon_psnr": recon["psnr"], "recon_l1": recon["l1"],
               "keep_ratio": vae.config.num_tokens / vae.config.num_cells,
               "codebook_usage": recon["codebook_usage_percent"], "codebook_perplexity": recon["codebook_perplexity"],
               **keep_mask_focus(vae, val_set)}
    images = torch.stack([torch.as_tensor(val_set[i]["image"]) for i in range(min(12, len(val_set)))])
    labels = ["input", f"reconstruction ({vae.config.num_tokens} tokens)", "kept cells", "importance"]
    save_figure(labelled_figure(reconstruction_rows(vae, images), labels, figure_scale(vae, len(images), labels)),
                figures / "reconstructions.png")
    return metrics


@torch.no_grad()
def keep_mask_focus(vae, val_set, batch_size: int = 128) -> dict:
    """Where the keep-mask falls on the synthetic shapes: kept cells on a shape ÷ the shapes' share of the image.

    Empty for data without shape masks (your own images).
    """
    if "mask" not in val_set[0]:
        return {}
    loader = torch.utils.data.DataLoader(val_set, batch_size=batch_size)
    cell = vae.config.resolution // vae.config.grid_size
    kept_on_shape = kept = 0.0
    shares = []
    for batch in loader:
        keep_mask = vae(batch["image"]).keep_mask
        touches = F.max_pool2d(batch["mask"], cell).squeeze(1) > 0  # B×g×g: a cell touching any shape pixel
        kept_on_shape += float((touches & keep_mask).sum())
        kept += float(keep_mask.sum())
        shares.append(batch["mask"].flatten(1).mean(1))
    share = float(torch.cat(shares).mean())
    kept_share = kept_on_shape / max(kept, 1.0)
    return {"kept_foreground_share": kept_share, "foreground_share": share,
            "keep_focus_ratio": kept_share / max(share, 1e-8)}


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


def sample_images(stackformer, vae, num_classes: int, per_class: int, seed: int, out: Path,
                  classifier=None) -> dict:
    """Samples per class (guided) or unconditional → out/samples.npz, the figure, and class consistency."""
    pipeline = MVQPipeline(stackformer, vae)
    if num_classes:
        wanted = [c for c in range(num_classes) for _ in range(per_class)]
        samples = pipeline(labels=wanted, seed=seed, batch_size=64, sampling=SamplingConfig(cfg_scale=GUIDANCE_SCALE))
    else:
        wanted = None
        samples = pipeline(n=4 * per_class, seed=seed, batch_size=64)
    sample_tensor = from_uint8_hwc(samples)
    rows = list(sample_tensor.reshape(max(num_classes, 4), -1, *sample_tensor.shape[1:]))
    atomic_write(out / "samples.npz", lambda tmp: _save_npz(tmp, samples))
    metrics: dict[str, Any] = {"num_samples": len(samples)}
    labels = [f"samples {i + 1}–{i + len(rows[0])}" for i in range(0, len(samples), len(rows[0]))]
    if classifier is not None:
        predicted = predict(classifier, sample_tensor)
        metrics["class_consistency"] = float((predicted == torch.tensor(wanted)).float().mean())
        name = stackformer.config.class_label
        labels = [f"{name(c)}: classifier agrees on {int((predicted[c * len(row):(c + 1) * len(row)] == c).sum())}/{len(row)}"
                  for c, row in enumerate(rows)]
    save_figure(labelled_figure(rows, labels, figure_scale(vae, len(rows[0]), labels)),
                out / "figures" / "samples.png")
    return metrics


def _save_npz(path: str, samples: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: given a path, numpy would append ".npz" to the temporary name
        np.savez_compressed(handle, arr_0=samples)


def completion_figure(stackformer, vae, val_set, num_classes: int, seed: int, figures: Path, classifier=None,
                      count: int = 4, per_image: int = 3) -> None:
    """Held-out images completed from the tokens of their first half of grid rows (same class).

    With the shape classifier, each row's label counts the completions it still sees as the input's class.
    """
    pipeline = MVQPipeline(stackformer, vae)
    items = [val_set[i] for i in range(min(count, len(val_set)))]
    images = torch.stack([torch.as_tensor(item["image"]) for item in items])
    labels = [int(item["label"]) for item in items] if num_classes else None
    overlays, completions, _ = completion_pictures(pipeline, images, vae.config.grid_size // 2, labels, per_image,
                                                   seed)
    rows = [torch.cat([images[i:i + 1], overlays[i:i + 1], completions[i]]) for i in range(len(items))]
    row_labels = [f"image {i + 1}" for i in range(len(items))]
    if labels is not None:
        name = stackformer.config.class_label
        row_labels = [name(c) for c in labels]
        if classifier is not None:
            kept = predict(classifier, completions.flatten(0, 1)).view(len(items), per_image) == torch.tensor(labels)[:, None]
            row_labels = [f"{name(c)}: classifier agrees on {int(k.sum())}/{per_image}" for c, k in zip(labels, kept)]
    columns = ["input", "kept tokens", *[f"completion {j + 1}" for j in range(per_image)]]
    save_figure(labelled_figure(rows, row_labels, figure_scale(vae, len(columns), row_labels), columns),
                figures / "completions.png")


def plot_training_curves(run1: Path, run2: Path, figures: Path) -> None:
    plot_curves(read_scalars(run1 / "logs"), ["train/l1_loss", "val/rec_loss"], "MQ-VAE: L1 reconstruction loss",
                figures / "stage1_loss.png")
    plot_curves(read_scalars(run2 / "logs"),
                ["train/code_loss", "train/position_loss", "val/code_loss", "val/position_loss"],
                "Stackformer: code and position losses", figures / "stage2_loss.png")


def write_report(out: Path, vae, num_classes: int, metrics: dict) -> None:
    """metrics.json and index.html."""
    # NaN marks a metric this data has none of (e.g. no classes); JSON readers in Python accept it.
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    sections = [
        {"title": "Reconstructions", "image": "figures/reconstructions.png",
         "text": f"Rows: held-out inputs; reconstructions from {vae.config.num_tokens} of {vae.config.num_cells} "
                 "cells; the keep-mask (masked cells darkened); the mask module's importance scores (dark red: "
                 "least important, bright yellow: most, per image). recon_psnr and recon_l1 below compare held-out inputs and reconstructions as 8-bit "
                 "images (PSNR in dB; L1 as the mean absolute difference on the [-1, 1] scale), as mvq eval "
                 "measures them."},
        {"title": "Samples", "image": "figures/samples.png",
         "text": (f"One row per class, sampled by the class-conditional Stackformer (classifier-free guidance "
                  f"scale {GUIDANCE_SCALE}) and decoded by the MQ-VAE. Each row's label counts the samples that "
                  "the shape classifier sees as that class (the class consistency below)."
                  if num_classes else "Unconditional samples of the Stackformer, decoded by the MQ-VAE.")},
        {"title": "Completions", "image": "figures/completions.png",
         "text": "Each row: a held-out image; the cells of its tokens in the first half of the token grid's rows "
                 "(the rest darkened); completions the Stackformer continued from exactly those tokens"
                 + (" (asked for the image's own class). The row's label counts the completions the shape "
                    "classifier still assigns to that class. A completion can change the shape (a cross completed "
                    "as round blobs): when the kept half shows little of it, the Stackformer, small and briefly "
                    "trained, continues with what is common in its training data rather than what the top half "
                    "implies." if num_classes else ".")},
        {"title": "MQ-VAE training", "image": "figures/stage1_loss.png", "plot": True,
         "text": "L1 reconstruction loss on training batches and on held-out images."},
        {"title": "Stackformer training", "image": "figures/stage2_loss.png", "plot": True,
         "text": "Cross-entropy of the next code and of its position, on training batches and held-out tokens."},
    ]
    write_index(out, "mvq demo: masked vector quantization on synthetic shapes", sections, metrics,
                quality_checks(metrics))


# Example inputs the demo keeps in its tokenizer's folder (for `mvq app`): this many held-out images.
NUM_EXAMPLES = 6


def write_model_cards(out: Path, run1: Path, data: str | None, fast: bool, metrics: dict, val_set) -> None:
    """Model cards for out/mqvae and out/stackformer, and a few held-out images as out/mqvae/examples/."""
    from PIL import Image

    data_config = load_yaml(run1 / "config.yaml")["data"]
    r = data_config["resolution"]
    if data is None:
        training_data = (f"{data_config['num_train']:,} synthetic {r}×{r} images of coloured shapes (circle, square, "
                         "triangle, cross) on plain backgrounds, drawn by `mvq.data.synthetic`; made by code, so no "
                         "licence applies.")
    else:
        training_data = f"the images of the folder `{data}` at {r}×{r} pixels; their licences are those of that folder."
    examples = out / "mqvae" / EXAMPLES_DIR
    examples.mkdir(exist_ok=True)
    for i in range(min(NUM_EXAMPLES, len(val_set))):
        pixels = to_uint8_hwc(torch.as_tensor(val_set[i]["image"])[None])[0]
        atomic_write(examples / f"held-out-{i + 1}.png", lambda tmp, p=pixels: Image.fromarray(p).save(tmp, "PNG"))
    command = " ".join(["mvq demo", *(["--fast"] if fast else []), *([f"--data {data}"] if data else [])])
    common = dict(training_data=training_data, license="mit", tags=["demo"], hardware="this machine's CPU",
                  command=command, metrics_command=f"{command}  # writes metrics.json",
                  notes="A demonstration model: small and briefly trained, to show the method end to end. The report "
                        "`index.html` beside this folder shows what it does.")
    ModelCard(name="mvq demo MQ-VAE", summary=f"An MQ-VAE tokenizer for {r}×{r} images (the demo's).",
              wall_time=f"{metrics['seconds_stage1']:.0f} s",
              metrics={k: metrics[k] for k in ("recon_psnr", "recon_l1", "codebook_usage", "keep_focus_ratio")
                       if math.isfinite(metrics[k])}, **common).save(out / "mqvae")
    ModelCard(name="mvq demo Stackformer", summary="A Stackformer generating the demo MQ-VAE's tokens.",
              wall_time=f"{metrics['seconds_stage2']:.0f} s",
              metrics={k: metrics[k] for k in ("stage2_val_loss", "class_consistency") if math.isfinite(metrics[k])},
              **common).save(out / "stackformer")


# The report's figures are shown at their own size (never scaled by the browser): at most this wide.
FIGURE_WIDTH = 940


def figure_scale(vae, columns: int, row_labels: Sequence[str]) -> int:
    """The integer enlargement with which `columns` pictures and the row labels fit the report's width."""
    margin = 8 * max(len(t) for t in row_labels) + 12  # an upper bound of the label margin's width
    return fit_scale(vae.config.resolution, columns, FIGURE_WIDTH, margin)


class _Timed:
    """`with _Timed(timings, "seconds_x"):` records the block's wall time."""

    def __init__(self, timings: dict, name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = time.perf_counter() - self.start


# ----------------------------------------------------------------------------- the whole demo

def run_demo(out: str | Path = "demo-output", data: str | None = None, fast: bool = False, seed: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the whole pipeline and write the report into `out`; returns the metrics.

    `seed` overrides the demo configs' `run.seed` (and seeds sampling); by default their own seeds are used.
    """
    out = prepare_output_folder(out, data)
    seed_overrides = [] if seed is None else [f"run.seed={seed}"]
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"\n== mvq demo: {message}", flush=True)

    say("stage 1 — training the MQ-VAE")
    with _Timed(timings, "seconds_stage1"):
        run1 = train_tokenizer(out, data, [*seed_overrides, *(FAST_STAGE1 if fast else [])])
    vae = MQVAE.from_pretrained(out / "mqvae")
    train_set, val_set = _data_sets(run1)

    say("tokenizing the images")
    with _Timed(timings, "seconds_tokenize"):
        num_classes = tokenize_splits(out, vae, {"train": train_set, "val": val_set}, progress)

    say("stage 2 — training the Stackformer")
    with _Timed(timings, "seconds_stage2"):
        run2 = train_generator(out, [*seed_overrides, *(FAST_STAGE2 if fast else [])])

    classifier = None
    metrics: dict[str, Any] = {"num_classes": num_classes}
    if num_classes:
        say("training the shape classifier (checks class-conditional samples)")
        with _Timed(timings, "seconds_classifier"):
            classifier, metrics["classifier_accuracy"] = train_classifier(
                train_set, val_set, num_classes, epochs=1 if fast else 3, progress=progress,
                max_items=256 if fast else None)

    say("evaluating: reconstructions, samples, losses")
    with _Timed(timings, "seconds_evaluate"):
        metrics.update(evaluate_tokenizer(vae, val_set, out / "figures"))
        stackformer = Stackformer.from_pretrained(out / "stackformer")
        metrics.update(evaluate_stackformer(stackformer, TokenStore(out / "tokens" / "train"),
                                            TokenStore(out / "tokens" / "val")))
        metrics.update(sample_images(stackformer, vae, num_classes, 4 if fast else SAMPLES_PER_CLASS,
                                     0 if seed is None else seed, out, classifier))
        completion_figure(stackformer, vae, val_set, num_classes, 0 if seed is None else seed, out / "figures",
                          classifier)
        plot_training_curves(run1, run2, out / "figures")
    timings["seconds_total"] = time.perf_counter() - start
    metrics.update(timings)
    for key in DEMO_METRICS:  # e.g. no classifier on class-less user data: report NaN, never leave a gap
        metrics.setdefault(key, float("nan"))
    write_report(out, vae, num_classes, metrics)
    write_model_cards(out, run1, data, fast, metrics, val_set)
    say(f"done in {timings['seconds_total']:.0f} s — open {out / 'index.html'}")
    return metrics


def quality_checks(metrics: dict) -> list[dict]:
    """The demo's quality targets, each with its value and whether it is met."""
    def check(name: str, value: float, target: str, passed: bool) -> dict:
        return {"name": name, "value": value, "target": target, "passed": bool(passed) and math.isfinite(value)}

    m = metrics
    return [
        check("reconstruction PSNR (dB) of held-out 8-bit images", m["recon_psnr"], "≥ 24", m["recon_psnr"] >= 24),
        check("keep-mask focus (kept-on-shape share ÷ shape share)", m["keep_focus_ratio"], "≥ 1.5",
              m["keep_focus_ratio"] >= 1.5),
        check("class consistency of samples", m["class_consistency"], "≥ 0.6", m["class_consistency"] >= 0.6),
        check("Stackformer's held-out loss minus that of guessing codes and positions from their frequencies "
              "(negative: it learnt more than the frequencies)",
              m["stage2_val_loss"] - m["stage2_marginal_baseline_loss"], "< 0",
              m["stage2_val_loss"] < m["stage2_marginal_baseline_loss"]),
    ]
