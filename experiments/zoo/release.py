"""Release a trained tokenizer into the zoo: export its run, measure it, write its model card.

    python experiments/zoo/release.py --run runs/zoo/fashion-mnist-32 --name fashion-mnist-32 \
        --summary "..." --training-data "... (licence)" --license mit --dataset fashion_mnist \
        --command "mvq train configs/zoo/... ; mvq train --resume ..." --hardware "2 CPU cores" \
        --wall-time "9.5 h" [--num-images 1000] [--zoo zoo] [key=value data overrides ...]

Exports the run's best checkpoint to ZOO/NAME (config.json, model.safetensors), evaluates it on the
validation split of the run's own data config (overridable, e.g. data.root=...): PSNR, SSIM, L1 and
codebook use, LPIPS-VGG and rFID when their networks are installed (`mvq weights install`), writes
the card (`mvq.models.card.ModelCard`) whose metrics and re-measuring command come from that, and the
same record to experiments/results/zoo_NAME.json, which `tests/test_zoo.py` holds the card against.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
CARD_METRICS = {"psnr": "psnr", "ssim": "ssim", "l1": "l1", "lpips": "lpips_vgg", "rfid": "rfid",
                "codebook_usage_percent": "codebook_usage_percent"}


def measure(model_dir: Path, run_dir: Path, overrides: list[str], num_images: int | None) -> dict:
    """The card's metrics of the exported tokenizer on its run's validation data."""
    from mvq.config import build_dataclass
    from mvq.data import build_dataset
    from mvq.data.config import DataConfig
    from mvq.errors import UserError
    from mvq.evaluation import InceptionV3, evaluate_reconstruction
    from mvq.losses.perceptual import LPIPS
    from mvq.models.tokenizer import load_tokenizer
    from mvq.training.config import load_training_config

    raw, _ = load_training_config(run_dir / "config.yaml", overrides)
    dataset = build_dataset(build_dataclass(DataConfig, raw["data"], "data"), "val", augment=False)
    networks = {}
    for name, build in (("lpips", lambda: LPIPS(net="vgg")), ("inception", InceptionV3)):
        try:
            networks[name] = build()
        except UserError as exc:  # not installed: that metric is left out, and the card says which it has
            print(f"release: {name} not measured ({exc})", file=sys.stderr)
    result = evaluate_reconstruction(load_tokenizer(model_dir), dataset, num_images=num_images, progress=True,
                                     **networks)
    return {CARD_METRICS[key]: float(value) for key, value in result.items() if key in CARD_METRICS}


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
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--num-images", type=int, default=None, help="validation images to measure (default: all)")
    parser.add_argument("--zoo", type=Path, default=REPOSITORY / "zoo")
    parser.add_argument("--results", type=Path, default=REPOSITORY / "experiments" / "results")
    parser.add_argument("--notes", default="", help="more Markdown for the card")
    parser.add_argument("overrides", nargs="*", help="key=value changes of the run's data config (e.g. data.root=)")
    args = parser.parse_args()

    from mvq.models.card import ModelCard
    from mvq.training.run import export

    folder = export(args.run, args.zoo / args.name, which=args.checkpoint, overwrite=True)
    metrics = measure(folder, args.run, args.overrides, args.num_images)
    remeasure = " ".join(["python", "experiments/zoo/release.py", *map(shlex.quote, sys.argv[1:])])  # exactly this
    card = ModelCard(name=args.name, summary=args.summary, training_data=args.training_data, license=args.license,
                     datasets=args.dataset, tags=["image-tokenizer"], command=args.command, hardware=args.hardware,
                     wall_time=args.wall_time, metrics=metrics, metrics_command=remeasure, notes=args.notes)
    card.save(folder)
    record = {"name": args.name, "metrics": metrics, "num_images": args.num_images, "checkpoint": args.checkpoint,
              "metrics_command": remeasure, "overrides": args.overrides}
    out = args.results / f"zoo_{args.name}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
