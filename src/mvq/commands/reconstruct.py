"""`mvq reconstruct --vae DIR IMAGES... --out DIR`: reconstructions and what the mask module chose.

Outputs keep the inputs' paths relative to the folder they share (`A/a.png` and `B/a.png`
become `OUT/A/a_*.png` and `OUT/B/a_*.png`), so no output overwrites another.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mvq.commands.options import MODEL_FORMS, add_keep_argument, check_keep_budget

OUTPUT_KINDS = ("reconstruction", "keep_mask", "scores")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct", help="reconstruct images and show the keep-mask and score maps",
        description="For each image: its reconstruction, a keep-mask overlay (masked cells darkened) and a "
                    "heat-map of the mask module's scores, plus one grid of all of them (rows: inputs, "
                    "reconstructions, keep-masks, scores). Outputs keep the inputs' relative paths. Images "
                    "of another size are resized (shorter side) and centre-cropped to the model's resolution. "
                    "A VQGAN keeps every cell: its keep-mask is all kept and its score map flat.")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--vae", required=True, metavar="MODEL",
                   help="pretrained MQ-VAE or VQGAN (a VQGAN keeps every cell): " + MODEL_FORMS)
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out folder: its files of the same names as this run's outputs "
                        "are replaced, every other file in it is kept (unlike sample, complete and export, whose "
                        "--overwrite replaces the whole folder)")
    add_keep_argument(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mvq.storage.atomic import check_writable_destination
    from mvq.data.discovery import collect_images, output_stems
    from mvq.data.images import load_rgb, notice
    from mvq.data.transforms import eval_transform
    from mvq.distributed import resolve_device
    from mvq.models.tokenizer import load_tokenizer
    from mvq.visualize import image_grid, reconstruction_rows, save_image

    out = check_writable_destination(args.out, args.overwrite, inputs=[*args.images, args.vae])
    device = resolve_device(args.device)
    model = load_tokenizer(args.vae, map_location=device).eval()
    check_keep_budget(model, args.keep)
    resolution = model.config.resolution
    transform = eval_transform(resolution)
    paths, base = collect_images(args.images)
    stems = output_stems(paths, base)
    written: set[Path] = set()
    resized = 0
    all_rows: list[list[torch.Tensor]] = []
    for start in range(0, len(paths), args.batch_size):
        images = []
        for path in paths[start: start + args.batch_size]:
            image = load_rgb(path)
            resized += image.size != (resolution, resolution)
            images.append(transform(image))
        rows = reconstruction_rows(model, torch.stack(images).to(device), args.keep)
        all_rows.append([r.cpu() for r in rows])
        for i, stem in enumerate(stems[start: start + args.batch_size]):
            for kind, row in zip(OUTPUT_KINDS, rows[1:]):
                written.add(save_image(image_grid([row[i: i + 1]], pad=0), out / f"{stem}_{kind}.png"))
    if resized:
        notice(f"{resized} of {len(paths)} images are not {resolution}×{resolution}: resized (shorter side to "
               f"{resolution}) and centre-cropped")
    grid_rows = [torch.cat([rows[r] for rows in all_rows]) for r in range(4)]
    written.add(save_image(image_grid(grid_rows), out / "grid.png"))
    print(f"wrote {len(paths)} reconstructions, keep-mask overlays and score maps ({len(written)} files) to {out} "
          "(overview: grid.png)")
    return 0
