"""Tokenizers compared image by image on the same validation images: which differences are beyond noise.

A card's means say how good each model is; whether one model beats another on a few hundred images
needs the paired differences. Every model reconstructs the same images; per image PSNR, SSIM and
LPIPS-VGG are taken (on 8-bit images, as `mvq eval recon` does), and each model after the first is
compared with the first: the mean difference (model − first), its standard error, and a verdict at
two standard errors.

    python experiments/zoo/paired.py --data configs/zoo/mqvae_photos_64.yaml \
        --model photos-64 --model vqgan-photos-64-f8 --model photos-64-any-k@64 \
        --out experiments/results/zoo_photos_64_paired.json 'data.root=[../shared/photos,../shared/photos-extra]'

A model is a zoo name, a folder or a Hub id; NAME@K measures an MQ-VAE at budget K (a VQGAN keeps
every cell and takes no budget). `--plot FILE` draws PSNR and LPIPS against the tokens per image, one
line through the budgets of each model: a rate–distortion figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mvq.evaluation.paired import paired_difference

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips_vgg": False}


def parse_model(spec: str) -> tuple[str, int | None]:
    """NAME or NAME@K → (NAME, K or None)."""
    name, sep, keep = spec.rpartition("@")
    if not sep:
        return spec, None
    if not keep.isdigit() or int(keep) < 1:
        raise SystemExit(f"paired: --model {spec!r}: the budget after @ must be a count of cells, e.g. photos-64@32")
    return name, int(keep)


def plot(record: dict, out: Path) -> None:
    """PSNR and LPIPS-VGG against tokens per image; a model measured at several budgets is one line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[int, dict]]] = {}
    for spec, means in record["means"].items():
        lines.setdefault(parse_model(spec)[0], []).append((record["tokens"][spec], means))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for ax, metric, label in zip(axes, ("psnr", "lpips_vgg"), ("PSNR (dB, higher is better)",
                                                               "LPIPS-VGG (lower is better)")):
        for name, points in lines.items():
            points.sort(key=lambda point: point[0])
            ax.plot([k for k, _ in points], [m[metric] for _, m in points], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ticks = sorted(set(record["tokens"].values()))
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.set_xlabel("tokens per image")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{record['num_images']} validation images")
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a YAML config whose data section gives the validation images")
    parser.add_argument("--model", action="append", required=True, metavar="NAME[@K]",
                        help="a tokenizer to compare (repeatable; the first is the one the others are compared with)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--plot", type=Path, default=None, help="also draw PSNR and LPIPS against tokens here")
    parser.add_argument("overrides", nargs="*", help="data.KEY=VALUE changes of the config's data section")
    args = parser.parse_args()
    if len(args.model) < 2:
        parser.error("give at least two --model to compare")
    specs = [parse_model(spec) for spec in args.model]

    import torch

    from mvq.data.build import dataset_from_path
    from mvq.evaluation import from_uint8, to_uint8
    from mvq.evaluation.image_metrics import psnr, ssim
    from mvq.losses.perceptual import LPIPS
    from mvq.models.hub import resolve_pretrained
    from mvq.models.mqvae import MQVAE
    from mvq.models.tokenizer import load_tokenizer

    torch.set_grad_enabled(False)
    started = time.time()
    models = {spec: load_tokenizer(resolve_pretrained(name)).eval() for spec, (name, _) in zip(args.model, specs)}
    for spec, (name, keep) in zip(args.model, specs):
        if keep is not None and not isinstance(models[spec], MQVAE):
            raise SystemExit(f"paired: --model {spec!r}: {name} is a VQGAN, which keeps every cell; drop the @{keep}")
    resolutions = {model.config.resolution for model in models.values()}
    if len(resolutions) != 1:
        raise SystemExit(f"paired: the models work at different resolutions ({sorted(resolutions)}); compare "
                         f"models of one resolution")
    dataset = dataset_from_path(args.data, "val", resolutions.pop(), args.overrides)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    x8, lpips, chunks = to_uint8(images), LPIPS().eval(), range(0, len(images), args.batch_size)
    per_image: dict[str, dict[str, torch.Tensor]] = {}
    for spec, (_, keep) in zip(args.model, specs):
        model = models[spec]
        budget = {} if keep is None else {"keep": keep}
        r8 = torch.cat([to_uint8(model(images[s:s + args.batch_size], **budget).reconstruction.float())
                        for s in chunks])
        per_image[spec] = {
            "psnr": psnr(x8, r8), "ssim": ssim(x8, r8),
            "lpips_vgg": torch.cat([lpips(from_uint8(x8[s:s + args.batch_size]),
                                          from_uint8(r8[s:s + args.batch_size])).flatten() for s in chunks])}
        print(f"{spec}: " + ", ".join(f"{m} {float(v.mean()):.4f}" for m, v in per_image[spec].items()), flush=True)

    first = args.model[0]
    record = {
        "data": args.data, "overrides": args.overrides, "num_images": len(images),
        "tokens": {spec: keep or models[spec].config.num_tokens for spec, (_, keep) in zip(args.model, specs)},
        "means": {spec: {m: float(v.mean()) for m, v in metrics.items()} for spec, metrics in per_image.items()},
        "against_first": {spec: {m: paired_difference(per_image[spec][m], per_image[first][m], HIGHER_IS_BETTER[m])
                                 for m in HIGHER_IS_BETTER}
                          for spec in args.model[1:]},
        "seconds": round(time.time() - started, 1),
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    if args.plot:
        plot(record, args.plot)
    for spec, metrics in record["against_first"].items():
        print(f"{spec} − {first}: " + "; ".join(
            f"{m} {d['difference']:+.4f} ± {d['standard_error']:.4f} ({d['verdict']})" for m, d in metrics.items()))


if __name__ == "__main__":
    main()
