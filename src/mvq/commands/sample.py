"""`mvq sample`: images from a trained Stackformer and its MQ-VAE → PNGs and one uint8 `.npz`.

Under `torchrun --nproc_per_node G -m mvq.cli sample ...` the G processes share the images
(plain torch.distributed; see `mvq.inference.sample_output` for the folder and resuming). Every image has
its own seed, so any number of processes gives the images of one process.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mvq.commands.options import (MODEL_FORMS, add_overwrite_argument, add_sampling_arguments, add_speed_arguments,
                                  sampling_config)

if TYPE_CHECKING:
    import torch

    from mvq.models.sampling import SamplingConfig
    from mvq.inference.pipeline import MVQPipeline


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample", help="sample images from a Stackformer + MQ-VAE",
        description="Sample images with a trained Stackformer and decode them with its MQ-VAE. Writes "
                    "OUT/images/NNNNNN.png and OUT/samples.npz (arr_0: uint8 N×R×R×3, the layout FID "
                    "evaluators read; labels: the class of each image). A seed gives the same images "
                    "whatever the batch size and number of processes (torchrun --nproc_per_node G -m mvq.cli "
                    "sample ...). Rerunning an interrupted command resumes it; a second command on an --out "
                    "in use is refused.")
    parser.add_argument("--stackformer", required=True, metavar="MODEL", help="pretrained Stackformer: " + MODEL_FORMS)
    parser.add_argument("--vae", required=True, metavar="MODEL",
                        help="the pretrained MQ-VAE or VQGAN it was trained on: " + MODEL_FORMS)
    parser.add_argument("--n", "--num-images", dest="n", type=int, required=True,
                        help="number of images (under torchrun write --num-images: torchrun takes --n for its own "
                             "--nnodes/--nproc-per-node)")
    parser.add_argument("--batch-size", type=int, default=16, help="images sampled at once (default: 16)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--labels", type=int, nargs="+", metavar="L",
                       help="class labels, repeated cyclically to --n images (class-conditional models)")
    group.add_argument("--classes-balanced", action="store_true",
                       help="labels 0, 1, ..., C-1, 0, 1, ...: every class equally often")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_sampling_arguments(parser)
    parser.add_argument("--no-png", dest="png", action="store_false", help="write only the .npz")
    parser.add_argument("--device", default="auto",
                        help="auto (GPU when available; under torchrun each process its own), cpu, cuda, cuda:1, ...")
    add_speed_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: new, empty, or an unfinished run of the same command (resumed)")
    add_overwrite_argument(parser, "samples")
    parser.add_argument("--allow-tokenizer-mismatch", action="store_true",
                        help="sample even if the Stackformer records another tokenizer than --vae, or none (warns)")
    parser.set_defaults(func=run)


def _labels(args: argparse.Namespace, num_classes: int) -> list[int] | None:
    """One label per image: --labels repeated cyclically, or --classes-balanced (checked against the model)."""
    from mvq.models.labels import labels_list
    from mvq.inference.pipeline import balanced_labels

    if args.classes_balanced:  # an unconditional model gets labels of one class here, and refuses them below
        labels = balanced_labels(args.n, max(num_classes, 1))
    elif args.labels:
        labels = [args.labels[i % len(args.labels)] for i in range(args.n)]
    else:
        labels = None
    return labels_list(labels, num_classes, args.n, ask="pass --labels L ... or --classes-balanced")


def sampling_request(args: argparse.Namespace, sampling: SamplingConfig, pipe: MVQPipeline) -> dict:
    """What this command samples, as recorded in an unfinished folder (batch size, processes,
    device and --compile are left out: they do not change the images)."""
    import dataclasses

    from mvq.models.pretrained import weights_fingerprint

    return {"stackformer": weights_fingerprint(pipe.stackformer), "vae": weights_fingerprint(pipe.vae),
            "n": args.n, "seed": args.seed, "labels": args.labels, "classes_balanced": args.classes_balanced,
            "sampling": dataclasses.asdict(sampling), "precision": args.precision, "png": args.png}


def run(args: argparse.Namespace) -> None:
    import contextlib

    import torch
    import torch.distributed as dist

    from mvq.inference import sample_output
    from mvq.distributed import init_from_environment, raise_on_every_rank, rank_and_world_size, resolve_device
    from mvq.errors import UserError
    from mvq.models.sampling import SamplingError

    if args.n < 1 or args.batch_size < 1:
        raise SamplingError("--n and --batch-size must be at least 1")
    sampling = sampling_config(args)
    sample_output.check_destination(args.out, args.overwrite, inputs=[args.vae, args.stackformer])  # before loading
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = init_from_environment(device.type)
    try:
        # Process 0 holds the folder's lock for the whole run: a second command on it is refused, on every process.
        with contextlib.ExitStack() as lock:
            refused = None
            if rank_and_world_size()[0] == 0:
                try:
                    lock.enter_context(sample_output.locked(args.out))
                except UserError as error:
                    refused = str(error)
            raise_on_every_rank(refused)
            _sample(args, sampling, device)
    finally:
        if created:
            dist.destroy_process_group()


def _sample(args: argparse.Namespace, sampling: SamplingConfig, device: torch.device) -> None:
    from tqdm import tqdm

    from mvq.inference import sample_output
    from mvq.distributed import barrier, rank_and_world_size
    from mvq.inference.pipeline import MVQPipeline

    pipe = MVQPipeline.from_pretrained(args.stackformer, args.vae, device=device, precision=args.precision,
                                       allow_tokenizer_mismatch=args.allow_tokenizer_mismatch)
    labels = _labels(args, pipe.num_classes)
    request = sampling_request(args, sampling, pipe)
    if args.compile:
        pipe.compile()
    folder = sample_output.plan(args.out, request, args.overwrite)
    rank, world_size = rank_and_world_size()
    barrier()  # every process has decided before the folder changes
    if rank == 0:
        sample_output.prepare(folder, request, args.png)
    barrier()
    batches = sample_output.missing_batches(sample_output.finished_ranges(folder, args.n), args.n, args.batch_size)
    barrier()  # every process has listed the finished shards before any writes one
    mine = sample_output.share(batches, rank, world_size)
    todo = sum(stop - start for start, stop in batches)
    if rank == 0 and todo < args.n:
        print(f"resuming {folder.work}: {args.n - todo} of {args.n} images are already sampled")
    with tqdm(total=sum(stop - start for start, stop in mine), desc="sampling", unit="img",
              disable=rank != 0) as progress:
        for start, stop in mine:
            sample_output.write_batch(folder, start, pipe.sample_range(start, stop, labels, args.seed, sampling),
                                      args.png)
            progress.update(stop - start)
    barrier()
    if rank == 0:
        path = sample_output.finish(folder, args.n, pipe.vae.config.resolution, labels)
        print(f"wrote {args.n} images to {path}" + (f" and {folder.out / 'images'}" if args.png else ""))
