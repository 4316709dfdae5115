"""Can the study's encoder and decoder learn colour? A bare loop, with no quantizer and no mvq training code.

Trains the encoder → decoder of the tokenizer study's VQGAN f4 arm (ch 16, 16×16 grid), skipping the
quantizer, with Adam on L1 alone, over the study's fixed training crops, once with GroupNorm at
`norm_groups` 32 (16 groups at 16 channels: one channel per group, i.e. instance normalisation) and
once with 4. Same seed, same batches. Reports the mean batch L1 (images in [-1, 1]) over the last
100 steps. Needs the crops that `tokenizers_photos.py --study tokenizers_photos_norm4` cuts.
    python experiments/claims/norm_groups_check.py [--steps 300]
Writes experiments/results/norm_groups_check.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPOSITORY, RESULTS, environment, load_settings, use_threads, write_json  # noqa: E402

STUDY = "tokenizers_photos_norm4"


def train_autoencoder(images, model_section: dict, steps: int, batch_size: int, lr: float) -> list[float]:
    """Batch L1 of each step of encoder → quant_conv → post_quant_conv → decoder (no quantizer)."""
    import torch

    from mvq.models.tokenizer import build_tokenizer, tokenizer_config

    torch.manual_seed(0)
    model = build_tokenizer(tokenizer_config(model_section))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))
    order = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        batch = images[torch.randint(len(images), (batch_size,), generator=order)]
        reconstruction = model.decoder(model.post_quant_conv(model.quant_conv(model.encoder(batch))))
        loss = (reconstruction - batch).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    import torch

    from mvq.data.layouts import folder_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    all_settings = load_settings()
    settings = all_settings[STUDY]
    use_threads(all_settings["threads"])
    crops = REPOSITORY / "runs" / "claims" / STUDY / "crops" / "train"
    if not crops.is_dir():
        raise SystemExit(f"{crops} is missing: run `python experiments/claims/tokenizers_photos.py --study {STUDY}` "
                         "first (it cuts the crops)")
    dataset = folder_dataset(crops, settings["model"]["resolution"], False, augment=False)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    results = {}
    for groups in (32, 4):
        section = {**settings["model"], **settings["arms"]["vqgan_f4_256"], "norm_groups": groups}
        start = time.perf_counter()
        losses = train_autoencoder(images, section, args.steps, settings["batch_size"], settings["lr"])
        tail = losses[-100:]
        results[f"norm_groups_{groups}"] = {
            "mean_l1_last_100_steps": statistics.fmean(tail), "min_max_l1_last_100_steps": [min(tail), max(tail)],
            "l1_every_50_steps": losses[::50], "seconds": round(time.perf_counter() - start, 1)}
        print(groups, results[f"norm_groups_{groups}"], flush=True)
    write_json(RESULTS / "norm_groups_check.json", {
        "what": "plain autoencoder (the VQGAN f4 arm without its quantizer), Adam on L1 only, fixed crops",
        "steps": args.steps, "batch_size": settings["batch_size"], "lr": settings["lr"], "study": STUDY,
        "command": "python experiments/claims/norm_groups_check.py"
                   + ("" if args.steps == 300 else f" --steps {args.steps}"),
        "environment": environment(), "results": results})


if __name__ == "__main__":
    main()
