"""`mvq reconstruct --vae DIR IMAGES... --out DIR`: reconstructions and what the mask module chose."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct", help="reconstruct images and show the keep-mask and score maps",
        description="For each image: its reconstruction, a keep-mask overlay (masked cells darkened) and a "
                    "heat-map of the mask module's scores, plus one grid of all of them (rows: inputs, "
                    "reconstructions, keep-masks, scores).")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--vae", required=True, help="pretrained MQ-VAE folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.set_defaults(func=run)


def collect_images(inputs: list[str]) -> list:
    """Files given directly, and the image files under folders given."""
    from pathlib import Path

    from mvq.data.images import list_files, scan_images

    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(list_files(path))
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    good, skipped = scan_images(paths)
    for bad, reason in skipped:
        print(f"skipped {bad}: {reason}")
    if not good:
        raise ValueError("no readable images among the inputs")
    return good


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from mvq.data.images import load_rgb
    from mvq.data.transforms import eval_transform
    from mvq.models.mqvae import MQVAE
    from mvq.visualize import image_grid, reconstruction_rows, save_image

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = MQVAE.from_pretrained(args.vae).to(device).eval()
    transform = eval_transform(model.config.resolution)
    paths = collect_images(args.images)
    out = Path(args.out)
    all_rows: list[list[torch.Tensor]] = []
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start: start + args.batch_size]
        images = torch.stack([transform(load_rgb(p)) for p in chunk]).to(device)
        rows = reconstruction_rows(model, images)
        all_rows.append([r.cpu() for r in rows])
        for i, path in enumerate(chunk):
            for name, row in zip(["reconstruction", "keep_mask", "scores"], rows[1:]):
                save_image(image_grid([row[i: i + 1]], pad=0), out / f"{path.stem}_{name}.png")
    grid_rows = [torch.cat([rows[r] for rows in all_rows]) for r in range(4)]
    save_image(image_grid(grid_rows), out / "grid.png")
    print(f"wrote {len(paths)} reconstructions, keep-mask overlays and score maps to {out} (overview: grid.png)")
    return 0
