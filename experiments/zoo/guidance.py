"""Choose a class-conditional Stackformer's guidance scale for its release, on training images only.

For each scale given: `--num-samples` class-balanced samples (`mvq sample`, seed 1; the release samples
with seed 0), their FID against Inception statistics of training images (`mvq eval stats --split train
--n N`), and their class consistency by the release's classifier. The held-out images on which the
release reports FID play no part. The rule, fixed before any result is seen: the scale with the lowest
FID is released. Writes every scale's numbers, the choice and the wall time to one JSON file.

    python experiments/zoo/guidance.py --run runs/zoo/fashion-mnist-32-stackformer --tokenizer fashion-mnist-32 \
        --fid-reference STATS_OF_TRAINING_IMAGES.npz --scales 1 1.5 2 3 --num-samples 1000 \
        --out experiments/results/guidance_fashion-mnist-32-stackformer.json data.root=/path/to/data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release import REPOSITORY, data_config, fid, generate, read_samples, reference_classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the Stackformer's run folder (its last checkpoint)")
    parser.add_argument("--tokenizer", required=True, help="the zoo tokenizer it learnt (a name or folder)")
    parser.add_argument("--fid-reference", type=Path, required=True, help="Inception statistics of training images")
    parser.add_argument("--scales", type=float, nargs="+", required=True)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample-batch-size", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--work", type=Path, default=REPOSITORY / "runs" / "guidance")
    parser.add_argument("--results", type=Path, default=REPOSITORY / "experiments" / "results")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="key=value changes of the tokenizer's data config")
    args = parser.parse_args()
    if not args.fid_reference.is_file():
        parser.error(f"{args.fid_reference} does not exist: write it with `mvq eval stats --split train --n N`")

    from mvq.demo.classifier import predict
    from mvq.models.hub import resolve_pretrained
    from mvq.models.stackformer import Stackformer
    from mvq.training.run import export

    start = time.time()
    tokenizer = resolve_pretrained(args.tokenizer)
    data = data_config(json.loads((args.results / f"zoo_{tokenizer.name}.json").read_text())["data"], args.overrides)
    model_dir = export(args.run, args.work / "model", which="last", overwrite=True)
    num_classes = Stackformer.from_pretrained(model_dir).config.num_classes
    classifier, classifier_accuracy = reference_classifier(data, num_classes)
    arms = []
    for scale in args.scales:
        arm = args.work / f"cfg{scale:g}"
        settings = argparse.Namespace(**{**vars(args), "cfg_scale": scale})
        samples_file = generate(model_dir, tokenizer, arm / "samples", args.num_samples, args.seed, settings)
        samples, labels = read_samples(samples_file)
        arms.append({"cfg_scale": scale,
                     "fid_vs_training_images": fid(samples_file, args.fid_reference, arm / "fid.json"),
                     "class_consistency": float((predict(classifier, samples) == labels).float().mean())})
        print(json.dumps(arms[-1]), flush=True)
    chosen = min(arms, key=lambda arm: arm["fid_vs_training_images"])["cfg_scale"]
    record = {"run": str(args.run), "tokenizer": tokenizer.name, "fid_reference": args.fid_reference.name,
              "num_samples": args.num_samples, "seed": args.seed, "classifier_accuracy": classifier_accuracy,
              "rule": "lowest FID against training images", "arms": arms, "chosen_cfg_scale": chosen,
              "wall_time_s": round(time.time() - start), "command": " ".join(["python", *sys.argv])}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
