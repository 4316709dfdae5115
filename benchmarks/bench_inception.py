"""FID's Inception network on a CPU: the default memory layout against channels-last weights.

Two arms, alternated round by round (A B A B …), on the same batch of 32 px uint8 images (resized to
299 px inside the network, as every FID of small images does):
  nchw           torch-fidelity's network with its weights as loaded (the default layout)
  channels_last  the same network with channels-last weights, as `mvq.evaluation.InceptionV3` keeps it
Prints JSON lines: images/s of each arm, the ratio nchw / channels_last seconds, and the largest
difference between the two arms' pool features (float rounding only).
    python benchmarks/bench_inception.py [--batch N] [--repeats N] [--threads T]
Without the Inception weights (`mvq weights install`) it prints why and exits without timing.
"""

from __future__ import annotations

import argparse

import torch
from harness import emit, environment, interleaved, ratio, summary

from mvq.evaluation.inception import InceptionV3
from mvq.storage.network_weights import INCEPTION, find


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=25, help="images per timed call (default: 25)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per arm (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if find(INCEPTION) is None:
        emit({"bench": "inception_layout", "skipped": f"no Inception weights ({INCEPTION.filename} or "
                                                      f"{INCEPTION.converted}); run `mvq weights install` first"})
        return
    channels_last = InceptionV3()
    nchw = InceptionV3()
    nchw.net.to(memory_format=torch.contiguous_format)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8)
    emit(environment(batch=args.batch, resolution=32))

    arms = {"nchw": lambda: nchw(images), "channels_last": lambda: channels_last(images)}
    samples = interleaved(arms, args.repeats)
    difference = (nchw(images)[0] - channels_last(images)[0]).abs().max().item()
    record = {"bench": "inception_layout", "batch": args.batch}
    for name in arms:
        seconds = summary(samples[name])
        record[f"{name}_s_per_batch"] = seconds
        record[f"{name}_images_per_s"] = args.batch / seconds["median"]
    record.update(ratio(samples["nchw"], samples["channels_last"]))
    record["max_feature_difference"] = difference
    record["note"] = "ratio = nchw / channels_last seconds per batch (median of each arm)"
    emit(record)


if __name__ == "__main__":
    main()
