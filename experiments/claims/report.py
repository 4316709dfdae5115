"""Markdown tables of the results JSON files (for experiments/README.md): mean over seeds, then each seed.
    python experiments/claims/report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, read_json  # noqa: E402

TOKENIZER_COLUMNS = (("rfid", "rFID ↓", 1), ("lpips", "LPIPS ↓", 3), ("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 3),
                     ("codebook_usage_percent", "usage % ↑", 1))


def tokenizer_table(data: dict) -> str:
    lines = ["| arm | tokens | seeds | " + " | ".join(title for _, title, _ in TOKENIZER_COLUMNS) + " | train s |",
             "|---|---|---|" + "---|" * len(TOKENIZER_COLUMNS) + "---|"]
    for arm, seeds in data["runs"].items():
        model = next(iter(seeds.values()))["model"]
        grid = model["resolution"] // 2 ** (len(model["ch_mult"]) - 1)
        tokens = int(model.get("keep_ratio", 1.0) * grid * grid)
        cells = []
        for key, _, digits in TOKENIZER_COLUMNS:
            values = [s["metrics"][key] for s in seeds.values() if s["metrics"].get(key) is not None]
            shown = " / ".join(f"{v:.{digits}f}" for v in values)
            cells.append(f"{sum(values) / len(values):.{digits}f} ({shown})" if values else "n/a")
        train = sum(s["seconds"]["train"] for s in seeds.values()) / len(seeds)
        lines.append(f"| {arm} | {tokens} ({grid}×{grid}) | {', '.join(seeds)} | " + " | ".join(cells)
                     + f" | {train:.0f} |")
    return "\n".join(lines)


def generation_table(data: dict) -> str:
    lines = ["| tokenizer + generator | params | FID ↓ | class consistency ↑ | val NLL / image (nats) ↓ | s / image |",
             "|---|---|---|---|---|---|"]
    for name, run in data["runs"].items():
        lines.append(f"| {name} | {run['stackformer_parameters']:,} | {run['fid']:.1f} | "
                     f"{run['class_consistency']:.3f} | {run['nll_per_image_nats']:.1f} | "
                     f"{run['seconds_per_image']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    tokenizers = RESULTS / "tokenizers_photos.json"
    if tokenizers.is_file():
        print("Mean over seeds (each seed in brackets):\n")
        print(tokenizer_table(read_json(tokenizers)))
    generation = RESULTS / "generation_fashion_mnist.json"
    if generation.is_file():
        print()
        print(generation_table(read_json(generation)))


if __name__ == "__main__":
    main()
