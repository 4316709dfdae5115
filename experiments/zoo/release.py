"""Release a trained model into the zoo: export its run, measure it, write its model card.

A tokenizer (stage-1 run):
    python experiments/zoo/release.py --run runs/zoo/fashion-mnist-32 --name fashion-mnist-32 \
        --summary "..." --training-data "... (licence)" --license mit --dataset fashion_mnist \
        --command "mvq train configs/zoo/... ; mvq train --resume ..." --hardware "2 CPU cores" \
        --wall-time "9.5 h" [--num-images 1000] [--data-config configs/zoo/....yaml] [--zoo zoo] \
        [key=value data overrides ...]
A Stackformer (stage-2 run) on a released zoo tokenizer:
    python experiments/zoo/release.py --run runs/zoo/fashion-mnist-32-stackformer --name ... \
        --tokenizer fashion-mnist-32 --fid-reference STATS.npz --num-samples 10000 [--cfg-scale S] ... \
        [key=value overrides of the tokenizer's data config, e.g. data.root=...]

A tokenizer is exported from its run's best checkpoint to ZOO/NAME (config.json, model.safetensors)
and evaluated on the validation split of the run's own data config: PSNR, SSIM, L1 and codebook
use, LPIPS-VGG and rFID when their networks are installed (`mvq weights install`); an any-K MQ-VAE
also at each budget of `--keeps K ...` (PSNR, SSIM, LPIPS, rFID as METRIC_keepK). A few validation
images (one per class where the data have classes) go to ZOO/NAME/examples/, the app's examples,
with a figure of their reconstructions; `--examples DIR` takes DIR's images instead (each one's
central square at the model's resolution), for data whose licence keeps them out of the repository.

A Stackformer is exported from its run's last checkpoint and measured by what it generates:
`--num-samples` class-balanced samples (`mvq sample`, resumable in --work), FID against
`--fid-reference` (`mvq eval stats` of the validation images; computed there when missing), class
consistency by a small classifier trained on the training images (its own validation accuracy is
reported beside it), and the validation NLL of its run's held-out token store; a figure of samples
per class.

Both write the card (`mvq.models.card.ModelCard`) whose metrics and re-measuring command come from
that (a tokenizer released with `--data-config` names `mvq eval recon --vae NAME --data CONFIG`, a
Stackformer `experiments/zoo/remeasure.py NAME` with the statistics and held-out tokens used here: both
measure the released weights on any clone; otherwise this release command), and the same
record to experiments/results/zoo_NAME.json with `check`: the numbers `mvq.models.zoo.example_check`
gives on the examples, which `tests/test_zoo.py` recomputes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
CARD_METRICS = {"psnr": "psnr", "ssim": "ssim", "l1": "l1", "lpips": "lpips_vgg", "rfid": "rfid",
                "codebook_usage_percent": "codebook_usage_percent"}
BUDGET_METRICS = ("psnr", "ssim", "lpips_vgg", "rfid")  # measured at each budget of --keeps
EXAMPLES_WITHOUT_CLASSES = 8
CLASSIFIER_EPOCHS = 5
FIGURE_SAMPLES_PER_CLASS = 10


def data_config(raw: dict, overrides: list[str]):
    """A data section (as a run's config or a zoo record holds it) with `key=value` overrides."""
    from mvq.config import apply_overrides, build_dataclass
    from mvq.data.config import DataConfig

    return build_dataclass(DataConfig, apply_overrides({"data": raw}, overrides)["data"], "data")


def measure_tokenizer(model_dir: Path, dataset, num_images: int | None, keeps: list[int] = ()) -> dict:
    """The card's metrics of an exported tokenizer on its validation data: at its own K, and for each
    budget of `keeps` (an any-K MQ-VAE) PSNR, SSIM, LPIPS and rFID as METRIC_keepK."""
    from mvq.errors import UserError
    from mvq.evaluation import InceptionV3, evaluate_reconstruction
    from mvq.losses.perceptual import LPIPS
    from mvq.models.tokenizer import load_tokenizer

    networks = {}
    for name, build in (("lpips", lambda: LPIPS(net="vgg")), ("inception", InceptionV3)):
        try:
            networks[name] = build()
        except UserError as exc:  # not installed: that metric is left out, and the card says which it has
            print(f"release: {name} not measured ({exc})", file=sys.stderr)
    model = load_tokenizer(model_dir)
    metrics = {}
    for keep in [None, *keeps]:
        result = evaluate_reconstruction(model, dataset, num_images=num_images, progress=True, keep=keep, **networks)
        card = {CARD_METRICS[key]: float(value) for key, value in result.items() if key in CARD_METRICS}
        metrics.update(card if keep is None else
                       {f"{key}_keep{keep}": value for key, value in card.items() if key in BUDGET_METRICS})
    return metrics


def write_examples(model_dir: Path, dataset) -> list[int]:
    """A few validation images as ZOO/NAME/examples/NN[-class].png: the first of each class (or the first
    few); returns their labels (empty without classes)."""
    import torch

    from mvq.models.card import EXAMPLES_DIR
    from mvq.visualize import save_image

    classes = list(getattr(dataset, "classes", None) or getattr(getattr(dataset, "dataset", None), "classes", None)
                   or [])  # a Subset (data.max_val_images) keeps its dataset's classes there
    chosen: list[tuple[int, int | None]] = []
    if classes:
        seen: set[int] = set()
        for index in range(len(dataset)):
            label = int(dataset[index]["label"])
            if label not in seen:
                seen.add(label)
                chosen.append((index, label))
            if len(seen) == len(classes):
                break
        chosen.sort(key=lambda item: item[1])
    else:
        chosen = [(i, None) for i in range(min(EXAMPLES_WITHOUT_CLASSES, len(dataset)))]
    folder = model_dir / EXAMPLES_DIR
    folder.mkdir(exist_ok=True)
    for n, (index, label) in enumerate(chosen):
        suffix = "" if label is None else "-" + "".join(c if c.isalnum() else "-" for c in classes[label].lower())
        save_image((torch.as_tensor(dataset[index]["image"]) + 1) / 2, folder / f"{n:02d}{suffix}.png")
    return [label for _, label in chosen if label is not None]


def write_given_examples(model_dir: Path, source: Path, resolution: int) -> None:
    """The PNG/JPEG images of SOURCE (name order) as ZOO/NAME/examples/NN-STEM.png: each one's central
    square, resized to `resolution` (Lanczos)."""
    from PIL import Image

    from mvq.errors import UserError
    from mvq.models.card import EXAMPLES_DIR

    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise UserError(f"--examples {source}: no .png or .jpg images there")
    folder = model_dir / EXAMPLES_DIR
    folder.mkdir(exist_ok=True)
    for n, file in enumerate(files):
        image = Image.open(file).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.LANCZOS)
        image.save(folder / f"{n:02d}-{file.stem}.png")


def reconstruction_figure(model_dir: Path, keeps: list[int] = ()) -> str:
    """ZOO/NAME/reconstructions.png: the examples, their reconstructions and (an MQ-VAE's) the cells kept;
    an any-K MQ-VAE's at each budget of `keeps` and its own K (a reconstruction row and a kept-cells row each)."""
    from mvq.models.tokenizer import load_tokenizer
    from mvq.models.zoo import example_images_tensor
    from mvq.visualize import fit_scale, labelled_figure, reconstruction_rows, save_figure

    images = example_images_tensor(model_dir)
    vae = load_tokenizer(model_dir).eval()
    if keeps:
        rows, labels = [images], ["original"]
        for keep in [*keeps, None]:
            count = keep or vae.config.num_tokens
            pictures = reconstruction_rows(vae, images, keep=keep)
            rows.append(pictures[1])
            labels.append(f"{count} tokens")
            if count < vae.config.num_cells:  # with every cell kept, that row would repeat the originals
                rows.append(pictures[2])
                labels.append(f"{count} cells kept")
    else:
        labels = ["original", "reconstruction"] + (["kept cells"] if hasattr(vae.config, "keep_count") else [])
        rows = reconstruction_rows(vae, images)[:len(labels)]  # a VQGAN keeps every cell: no row to show it
    scale = fit_scale(images.shape[-1], images.shape[0], 900, margin=140)
    save_figure(labelled_figure(rows, labels, scale), model_dir / "reconstructions.png")
    return "reconstructions.png"


def mvq_command(*args: str) -> None:
    """`mvq ARGS` in this process; stops the release when it fails."""
    from mvq.cli import main

    print("release: mvq " + " ".join(map(shlex.quote, args)), flush=True)
    try:
        main(list(args))
    except SystemExit as exc:
        if exc.code:
            raise


def run_val_tokens(run_dir: Path) -> Path:
    """The held-out token store a Stackformer run validated on (`data.val_tokens` of its config)."""
    from mvq.training.config import load_training_config

    _, config = load_training_config(run_dir / "config.yaml", [], resolve=False)
    return Path(config.data.val_tokens)


def validation_nll(model_dir: Path, val_tokens: Path) -> float:
    """Teacher-forced NLL per image (nats, codes + positions) of a held-out token store."""
    import torch
    from torch.utils.data import DataLoader

    from mvq.data.token_store import TokenStore
    from mvq.models.stackformer import Stackformer

    model = Stackformer.from_pretrained(model_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in DataLoader(TokenStore(val_tokens), batch_size=500):
            labels = batch["label"] if model.config.num_classes else None
            total -= float(model.log_likelihood(batch["codes"], batch["positions"], labels).sum())
            count += batch["codes"].shape[0]
    return total / count


def generate(model_dir: Path, tokenizer: Path, out: Path, num_samples: int, seed: int, args: argparse.Namespace
             ) -> Path:
    """Class-balanced samples with the sampling settings of `args` (`mvq sample`, resumed when run again)."""
    mvq_command("sample", "--stackformer", str(model_dir), "--vae", str(tokenizer), "--n", str(num_samples),
                "--classes-balanced", "--seed", str(seed), "--batch-size", str(args.sample_batch_size), "--no-png",
                "--cfg-scale", str(args.cfg_scale), "--temperature", str(args.temperature),
                "--top-k", str(args.top_k), "--top-p", str(args.top_p), "--out", str(out))
    return out / "samples.npz"


def fid(samples: Path, reference: Path, out: Path) -> float:
    """FID of a samples .npz against Inception statistics (`mvq eval gen`)."""
    mvq_command("eval", "gen", "--samples", str(samples), "--ref", str(reference), "--num-workers", "0",
                "--no-progress", "--out", str(out))
    return float(json.loads(out.read_text())["metrics"]["fid"])


def read_samples(samples: Path):
    """The images of a samples .npz as floats in [-1, 1], and their labels (None when unconditional)."""
    import numpy as np
    import torch

    with np.load(samples, allow_pickle=False) as stored:
        images = torch.from_numpy(stored["arr_0"]).permute(0, 3, 1, 2).float() / 127.5 - 1
        labels = torch.from_numpy(stored["labels"]).long() if "labels" in stored else None
    return images, labels


def reference_classifier(data, num_classes: int):
    """The judge of class consistency: a small CNN trained (seeded) on the training images; its validation accuracy."""
    import torch

    from mvq.data import build_dataset
    from mvq.demo.classifier import accuracy, train_classifier

    torch.manual_seed(0)
    train_set, val_set = build_dataset(data, "train", augment=False), build_dataset(data, "val")
    classifier, _ = train_classifier(train_set, val_set, num_classes, epochs=CLASSIFIER_EPOCHS, progress=False)
    return classifier, accuracy(classifier, val_set)


def measure_stackformer(model_dir: Path, tokenizer: Path, args: argparse.Namespace, data, val_tokens: Path,
                        figure_dir: Path) -> tuple[dict, str]:
    """FID, class consistency (and the classifier's own accuracy) and the NLL of `val_tokens`; the samples
    figure, written to `figure_dir`."""
    from mvq.demo.classifier import predict
    from mvq.models.stackformer import Stackformer
    from mvq.visualize import fit_scale, labelled_figure, save_figure

    work = args.work / args.name
    reference = args.fid_reference
    if not reference.is_file():
        config_file = work / "images.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        import yaml

        config_file.write_text(yaml.safe_dump({"data": dataclasses.asdict(data)}))
        mvq_command("eval", "stats", "--data", str(config_file), "--split", "val", "--out", str(reference),
                    "--num-workers", "0", "--no-progress")
    samples_file = generate(model_dir, tokenizer, work / "samples", args.num_samples, 0, args)
    metrics = {"fid": fid(samples_file, reference, work / "fid.json")}
    samples, labels = read_samples(samples_file)
    model = Stackformer.from_pretrained(model_dir)
    names = list(model.config.class_names or [str(c) for c in range(model.config.num_classes)])
    if labels is not None:
        classifier, metrics["classifier_accuracy"] = reference_classifier(data, len(names))
        metrics["class_consistency"] = float((predict(classifier, samples) == labels).float().mean())
    metrics["nll_per_image_nats"] = validation_nll(model_dir, val_tokens)
    if labels is not None:
        rows = [samples[labels == c][:FIGURE_SAMPLES_PER_CLASS] for c in range(len(names))]
    else:
        rows = [samples[i: i + FIGURE_SAMPLES_PER_CLASS] for i in range(0, 4 * FIGURE_SAMPLES_PER_CLASS,
                                                                         FIGURE_SAMPLES_PER_CLASS)]
        names = [""] * len(rows)
    scale = fit_scale(samples.shape[-1], FIGURE_SAMPLES_PER_CLASS, 900, margin=140)
    save_figure(labelled_figure(rows, names, scale), figure_dir / "samples.png")
    return metrics, "samples.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--summary", required=True)
    parser.add_argument("--training-data", required=True, help="what it was trained on, licences included")
    parser.add_argument("--license", default="mit")
    parser.add_argument("--dataset", action="append", default=[], help="a Hub dataset id (repeatable)")
    parser.add_argument("--command", required=True, help="the exact commands that trained it")
    parser.add_argument("--hardware", default="")
    parser.add_argument("--wall-time", default="")
    parser.add_argument("--checkpoint", default=None, choices=["best", "last"],
                        help="default: best for a tokenizer, last for a Stackformer")
    parser.add_argument("--num-images", type=int, default=None, help="validation images to measure (default: all)")
    parser.add_argument("--zoo", type=Path, default=REPOSITORY / "zoo")
    parser.add_argument("--results", type=Path, default=REPOSITORY / "experiments" / "results")
    parser.add_argument("--notes", default="", help="more Markdown for the card")
    parser.add_argument("--data-config", default=None,
                        help="a tokenizer: the YAML config (e.g. configs/zoo/X.yaml) whose data section, with the "
                             "overrides, is the run's; the card then names `mvq eval recon` of the released model "
                             "on it as the command that measures it again, which any clone with the data runs")
    parser.add_argument("--keeps", type=int, nargs="+", default=[], metavar="K",
                        help="an any-K MQ-VAE: also measure it at these token budgets (METRIC_keepK on the card)")
    parser.add_argument("--examples", type=Path, default=None,
                        help="a folder of a tokenizer's example images (default: the first validation images)")
    stage2 = parser.add_argument_group("a Stackformer")
    stage2.add_argument("--tokenizer", help="the zoo tokenizer it learnt (a name or folder)")
    stage2.add_argument("--fid-reference", type=Path, help="FID statistics of the validation images (.npz)")
    stage2.add_argument("--num-samples", type=int, default=10_000)
    stage2.add_argument("--sample-batch-size", type=int, default=100)
    stage2.add_argument("--cfg-scale", type=float, default=1.0)
    stage2.add_argument("--temperature", type=float, default=1.0)
    stage2.add_argument("--top-k", type=int, default=0)
    stage2.add_argument("--top-p", type=float, default=1.0)
    stage2.add_argument("--work", type=Path, default=REPOSITORY / "runs" / "release",
                        help="where samples are kept (resumed when the command is run again)")
    parser.add_argument("overrides", nargs="*",
                        help="key=value changes of the (tokenizer's) run's data config (e.g. data.root=)")
    args = parser.parse_args()

    from mvq.config import load_yaml
    from mvq.data import build_dataset
    from mvq.models.card import ModelCard
    from mvq.models.hub import resolve_pretrained
    from mvq.models.zoo import example_check
    from mvq.training.run import export

    is_stackformer = args.tokenizer is not None
    if is_stackformer and args.fid_reference is None:
        parser.error("a Stackformer needs --fid-reference STATS.npz (written there when missing)")
    if args.keeps:
        from mvq.models.mqvae import MQVAEConfig
        from mvq.models.tokenizer import tokenizer_config

        model = None if is_stackformer else tokenizer_config(load_yaml(args.run / "config.yaml")["model"])
        if not isinstance(model, MQVAEConfig):
            parser.error("--keeps measures an MQ-VAE at other token budgets; this run is not an MQ-VAE's")
        if not all(1 <= keep <= model.num_cells for keep in args.keeps):
            parser.error(f"--keeps: budgets must lie in 1..{model.num_cells} (the cells of its grid)")
    # A tokenizer is measured on its run's validation data (with the overrides).
    run_data = None if is_stackformer else data_config(load_yaml(args.run / "config.yaml")["data"], args.overrides)
    if args.data_config and run_data is not None:
        if data_config(load_yaml(args.data_config)["data"], args.overrides) != run_data:
            parser.error(f"--data-config {args.data_config}: its data section with the overrides is not the "
                         f"run's ({args.run / 'config.yaml'}): the card's command would measure other images")
    which = args.checkpoint or ("last" if is_stackformer else "best")
    folder = export(args.run, args.zoo / args.name, which=which, overwrite=True)
    record: dict = {"name": args.name, "checkpoint": which, "overrides": args.overrides}
    if is_stackformer:
        tokenizer = resolve_pretrained(args.tokenizer)
        tokenizer_record = json.loads((args.results / f"zoo_{tokenizer.name}.json").read_text())
        data = data_config(tokenizer_record["data"], args.overrides)
        val_tokens = run_val_tokens(args.run)
        metrics, figure = measure_stackformer(folder, tokenizer, args, data, val_tokens, folder)
        labels = tokenizer_record.get("example_labels") or None
        record.update(tokenizer=tokenizer.name, example_labels=labels,
                      check=example_check(tokenizer, folder, labels),
                      sampling={"num_samples": args.num_samples, "sample_batch_size": args.sample_batch_size,
                                "cfg_scale": args.cfg_scale, "seed": 0, "temperature": args.temperature,
                                "top_k": args.top_k, "top_p": args.top_p})
        picture = f"![samples, one row per class]({figure})"
    else:
        data = run_data
        dataset = build_dataset(data, "val", augment=False)
        metrics = measure_tokenizer(folder, dataset, args.num_images, args.keeps)
        if args.examples:
            write_given_examples(folder, args.examples, data.resolution)
            labels = []
        else:
            labels = write_examples(folder, dataset)
        record.update(data=dataclasses.asdict(data), num_images=args.num_images, example_labels=labels,
                      check=example_check(folder))
        picture = f"![examples and their reconstructions]({reconstruction_figure(folder, args.keeps)})"
    release_command = " ".join(["python", "experiments/zoo/release.py", *map(shlex.quote, sys.argv[1:])])
    # The command that measures the released weights again, on any clone with the data (not the run's).
    if is_stackformer:
        remeasure = shlex.join(["python", "experiments/zoo/remeasure.py", args.name, "--fid-reference",
                                str(args.fid_reference), "--val-tokens", str(val_tokens), *args.overrides])
    elif args.data_config:
        remeasure = "\n".join(
            shlex.join(["mvq", "eval", "recon", "--vae", args.name, "--data", args.data_config,
                        *(["--n", str(args.num_images)] if args.num_images else []), *budget, *args.overrides])
            for budget in [[], *(["--keep", str(keep)] for keep in args.keeps)])
    else:
        remeasure = release_command
    notes = "\n\n".join(part for part in (picture, args.notes) if part)
    card = ModelCard(name=args.name, summary=args.summary, training_data=args.training_data, license=args.license,
                     datasets=args.dataset, tags=["image-generation" if is_stackformer else "image-tokenizer"],
                     command=args.command, hardware=args.hardware, wall_time=args.wall_time, metrics=metrics,
                     metrics_command=remeasure, notes=notes)
    card.save(folder)
    record.update(metrics=metrics, metrics_command=remeasure, release_command=release_command)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"zoo_{args.name}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
