"""Markdown tables of every study's results JSON (for experiments/README.md): mean over seeds, then each seed.
    python experiments/claims/report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, read_json  # noqa: E402

TOKENIZER_COLUMNS = (("rfid", "rFID ↓", 1), ("lpips", "LPIPS ↓", 3), ("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 3),
                     ("codebook_usage_percent", "usage % ↑", 1))


def _mean_and_seeds(values: list[float], digits: int) -> str:
    shown = " / ".join(f"{v:.{digits}f}" for v in values)
    return f"{sum(values) / len(values):.{digits}f}" + (f" ({shown})" if len(values) > 1 else "")


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
            cells.append(_mean_and_seeds(values, digits) if values else "n/a")
        train = sum(s["seconds"]["train"] for s in seeds.values()) / len(seeds)
        lines.append(f"| {arm} | {tokens} ({grid}×{grid}) | {', '.join(seeds)} | " + " | ".join(cells)
                     + f" | {train:.0f} |")
    return "\n".join(lines)


def generation_table(data: dict) -> str:
    lines = ["| tokenizer + generator | params | seeds | N per seed | FID ↓ | class consistency ↑ | "
             "val NLL / image (nats) ↓ | s / image |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in data["runs"].items():
        seeds = {"0": runs} if "fid" in runs else runs  # the first study ran one seed and stored it flat
        first = next(iter(seeds.values()))
        cells = [_mean_and_seeds([r[key] for r in seeds.values()], digits)
                 for key, digits in (("fid", 1), ("class_consistency", 3), ("nll_per_image_nats", 1),
                                     ("seconds_per_image", 4))]
        lines.append(f"| {name} | {first['stackformer_parameters']:,} | {', '.join(seeds)} | {first['num_samples']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    for path in sorted(RESULTS.glob("tokenizers_photos*.json")):
        print(f"{path.name}: mean over seeds (each seed in brackets)\n")
        print(tokenizer_table(read_json(path)) + "\n")
    for path in sorted(RESULTS.glob("generation_fashion_mnist*.json")):
        print(f"{path.name}: mean over seeds (each seed in brackets)\n")
        print(generation_table(read_json(path)) + "\n")


if __name__ == "__main__":
    main()
