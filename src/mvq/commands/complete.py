"""`mvq complete`: continue real images from the tokens of their first grid rows.

The Stackformer generates tokens in raster order, so an image's own tokens in its first R
rows are exactly a prefix it was trained to continue: they are forced into both stacks'
caches and the rest is sampled. With a class-conditional model the completions may be asked
for another class than the image's (class-swap editing).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mvq.commands.options import MODEL_FORMS, add_overwrite_argument, add_sampling_arguments, add_speed_arguments

if TYPE_CHECKING:
    import torch


# Small models' figures are enlarged (nearest neighbour) to about this many pixels per picture.
FIGURE_PICTURE_SIZE = 128


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "complete", help="complete real images from their first token rows (and class-swap editing)",
        description="Tokenize each image with the MQ-VAE, keep its (code, position) tokens in the first "
                    "--keep-rows rows of the token grid, let the Stackformer continue from exactly those tokens "
                    "and decode. Writes OUT/<name>.png per image (the input, the kept cells, the completions) "
                    "and each completion as OUT/completions/<name>_<j>.png. Images of another size are resized "
                    "(shorter side) and centre-cropped to the MQ-VAE's resolution.")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--vae", required=True, metavar="MODEL", help="pretrained MQ-VAE or VQGAN: " + MODEL_FORMS)
    parser.add_argument("--stackformer", required=True, metavar="MODEL", help="pretrained Stackformer: " + MODEL_FORMS)
    parser.add_argument("--keep-rows", type=int, required=True, metavar="R",
                        help="rows of the token grid whose tokens are kept (0 = none, the grid height = all)")
    parser.add_argument("--labels", type=int, nargs="+", metavar="L",
                        help="class-conditional models: the class to complete each image as (one per image, or "
                             "one for all); another class than the image's edits it into that class")
    parser.add_argument("--n", type=int, default=4, help="completions per image (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="images completed at once (default: 8)")
    add_sampling_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    add_speed_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    add_overwrite_argument(parser, "figures")
    parser.add_argument("--allow-tokenizer-mismatch", action="store_true",
                        help="run even if the Stackformer records another tokenizer than --vae, or none (warns)")
    parser.set_defaults(func=run)


def figure_row(image: torch.Tensor, overlay: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
    """One picture: the input, its kept cells, then the completions (3×H×W in [0, 1], small images enlarged)."""
    import torch

    from mvq.visualize import enlarge, enlargement, image_grid

    row = torch.cat([image[None].cpu(), overlay[None].cpu(), completions.cpu()])
    return image_grid([enlarge(row, enlargement(row.shape[-1], FIGURE_PICTURE_SIZE))])


def run(args: argparse.Namespace) -> None:
    import torch

    from mvq.storage.atomic import atomic_directory, check_writable_destination
    from mvq.commands.options import sampling_config
    from mvq.data.discovery import collect_images, output_stems
    from mvq.data.images import load_rgb, notice
    from mvq.data.transforms import eval_transform
    from mvq.distributed import resolve_device
    from mvq.models.labels import labels_list
    from mvq.models.sampling import SamplingError
    from mvq.inference.pipeline import MVQPipeline
    from mvq.visualize import completion_pictures, image_grid, save_image

    if args.n < 1 or args.batch_size < 1:
        raise SamplingError("--n and --batch-size must be at least 1")
    sampling = sampling_config(args)
    inputs = [*args.images, args.vae, args.stackformer]
    check_writable_destination(args.out, args.overwrite, inputs=inputs)  # refuse before loading anything
    pipe = MVQPipeline.from_pretrained(args.stackformer, args.vae, device=resolve_device(args.device),
                                       precision=args.precision,
                                       allow_tokenizer_mismatch=args.allow_tokenizer_mismatch)
    g = pipe.vae.config.grid_size
    if not 0 <= args.keep_rows <= g:
        raise SamplingError(f"--keep-rows must be in 0..{g} (the token grid is {g}×{g}), got {args.keep_rows}")
    paths, base = collect_images(args.images)
    labels = labels_list(args.labels, pipe.num_classes, len(paths), items="images",
                         ask="pass --labels L (the class of each image, or one class for all; another class edits "
                             "the image into it)")
    if args.compile:
        pipe.compile()
    stems = output_stems(paths, base)
    resolution = pipe.vae.config.resolution
    transform = eval_transform(resolution)
    resized = 0
    with atomic_directory(args.out, overwrite=args.overwrite, inputs=inputs) as folder:
        for start in range(0, len(paths), args.batch_size):
            pictures = [load_rgb(path) for path in paths[start:start + args.batch_size]]
            resized += sum(picture.size != (resolution, resolution) for picture in pictures)
            images = torch.stack([transform(picture) for picture in pictures]).to(pipe.device)
            overlays, completions, _ = completion_pictures(
                pipe, images, args.keep_rows, None if labels is None else labels[start:start + len(pictures)],
                args.n, args.seed, sampling, first_image=start)
            for i, stem in enumerate(stems[start:start + len(pictures)]):
                save_image(figure_row(images[i], overlays[i], completions[i]), folder / f"{stem}.png")
                for j, completion in enumerate(completions[i]):
                    save_image(image_grid([completion[None]], pad=0), folder / "completions" / f"{stem}_{j}.png")
    if resized:
        notice(f"{resized} of {len(paths)} images are not {resolution}×{resolution}: resized (shorter side to "
               f"{resolution}) and centre-cropped")
    print(f"wrote {len(paths)} figures (input, kept cells, {args.n} completions) and {len(paths) * args.n} "
          f"completions to {args.out}")
