"""Measure a released zoo Stackformer again from the zoo and the data alone: its card's numbers on any clone.

The release measured the Stackformer with what its run held (the held-out token store it validated
on); a clone has the zoo folders and the data instead. This makes the same measurement from those:
the same samples (number, seed, guidance and sampling settings from experiments/results/zoo_NAME.json),
their FID against the statistics given, class consistency by the release's classifier (trained, seeded,
on the tokenizer's training images; its own accuracy beside it) and the NLL of the held-out token store
given. It prints each number beside the card's and writes both to --out.

    mvq eval stats --data configs/zoo/mqvae_fashion_mnist_32.yaml --split val --out test_stats.npz \\
        data.root=DATA data.max_val_images=null
    mvq tokenize --vae fashion-mnist-32 --data configs/zoo/mqvae_fashion_mnist_32.yaml --split val \\
        --out test_tokens data.root=DATA data.max_val_images=null
    python experiments/zoo/remeasure.py fashion-mnist-32-stackformer --fid-reference test_stats.npz \\
        --val-tokens test_tokens data.root=DATA

The overrides change the data section the tokenizer was released with (its zoo record's); without
any, the Stackformer's release overrides apply. Samples are kept in --work and resumed when run again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release import REPOSITORY, data_config, measure_stackformer  # noqa: E402

SAMPLE_BATCH_SIZE = 100  # the release's default, for records written before they kept it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="a released zoo Stackformer")
    parser.add_argument("--fid-reference", type=Path, required=True, help="Inception statistics (.npz) of the "
                        "images the card's FID is against (`mvq eval stats`, as above)")
    parser.add_argument("--val-tokens", type=Path, required=True, help="the held-out token store of the card's NLL "
                        "(`mvq tokenize --split val`, as above)")
    parser.add_argument("--results", type=Path, default=REPOSITORY / "experiments" / "results",
                        help="where the zoo records are (zoo_NAME.json)")
    parser.add_argument("--work", type=Path, default=REPOSITORY / "runs" / "remeasure")
    parser.add_argument("--out", type=Path, default=None, help="default: WORK/NAME/metrics.json")
    parser.add_argument("--cfg-scale", type=float, default=None, help="another guidance scale than the release's "
                        "(its samples are kept apart; the card's numbers are then no comparison)")
    parser.add_argument("overrides", nargs="*", help="key=value changes of the tokenizer's data section")
    args = parser.parse_intermixed_args()  # the name first, the overrides anywhere

    from mvq.models.card import ModelCard
    from mvq.models.hub import resolve_pretrained

    record_file = args.results / f"zoo_{args.name}.json"
    if not record_file.is_file():
        raise SystemExit(f"remeasure: no record {record_file}: {args.name} is not a released zoo model")
    record = json.loads(record_file.read_text())
    if "tokenizer" not in record:
        raise SystemExit(f"remeasure: {args.name} is a tokenizer; its card's command measures it "
                         f"(mvq eval recon --vae {args.name} ...)")
    for path, made_by in ((args.fid_reference, "mvq eval stats"), (args.val_tokens, "mvq tokenize --split val")):
        if not path.exists():
            raise SystemExit(f"remeasure: {path} does not exist; make it first with `{made_by}` (see --help)")
    tokenizer_record = json.loads((args.results / f"zoo_{record['tokenizer']}.json").read_text())
    data = data_config(tokenizer_record["data"], args.overrides or record["overrides"])
    sampling = record["sampling"]
    cfg_scale = sampling["cfg_scale"] if args.cfg_scale is None else args.cfg_scale
    as_released = cfg_scale == sampling["cfg_scale"]
    name = args.name if as_released else f"{args.name}-cfg{cfg_scale:g}"
    settings = argparse.Namespace(
        work=args.work, name=name, fid_reference=args.fid_reference, num_samples=sampling["num_samples"],
        sample_batch_size=sampling.get("sample_batch_size", SAMPLE_BATCH_SIZE), cfg_scale=cfg_scale,
        temperature=sampling["temperature"], top_k=sampling["top_k"], top_p=sampling["top_p"])
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    folder = resolve_pretrained(args.name)
    metrics, _ = measure_stackformer(folder, resolve_pretrained(record["tokenizer"]), settings, data,
                                     args.val_tokens, work)
    card = ModelCard.load(folder).metrics
    out = args.out or work / "metrics.json"
    out.write_text(json.dumps({"name": args.name, "cfg_scale": cfg_scale, "card": card, "again": metrics},
                              indent=1) + "\n")
    for key, value in metrics.items():
        print(f"{key}: {value:.4f} (card: {card[key]:.4f})" if as_released and key in card else f"{key}: {value:.4f}")


if __name__ == "__main__":
    main()
