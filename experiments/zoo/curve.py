"""Quality against training time of a (long, resumed) run: where it flattens, and what more compute would give.

Reads the run's TensorBoard logs, one events file per span (a span is one `mvq train` process), and
counts training time within each span only: the gaps between spans are not training. Writes the
validation curve (step, hours, every val/ scalar) as JSON and, with --plot, a figure of val PSNR
against hours.

    python experiments/zoo/curve.py --logs zoo/training/photos-64/logs \
        --out experiments/results/zoo_photos-64_curve.json --plot zoo/photos-64/quality_vs_time.png

`--against LABEL=LOGS` (repeatable) draws other runs in the same figure, against optimizer steps
rather than hours (runs of equal step cost compared at equal compute, whatever the machine's speed
on the day), and adds their curves to the JSON under "against". `--metric TAG` draws this run's TAG
instead of val/psnr: an any-K run at the others' budget, e.g. `--metric val/psnr_keep64` (logged with
`run.val_keep: [64]`) beside fixed-K runs at K = 64, whose val/psnr is at that K.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def validation_curve(logs: Path) -> list[dict]:
    """One row per validation: step, training hours so far, and the val/ scalars logged at that step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def created(file: Path) -> int:  # events.out.tfevents.UNIXTIME.HOST...: when the span's writer started
        return int(file.name.split(".")[3])

    files = sorted(logs.glob("events.out.tfevents.*"), key=created)
    if not files:
        raise SystemExit(f"curve: no TensorBoard events files in {logs}")
    rows: dict[int, dict] = {}
    hours_before = 0.0
    for file in files:  # one span each, in the order they were written (the name holds the start time)
        events = EventAccumulator(str(file), size_guidance={"scalars": 0}).Reload()
        tags = events.Tags()["scalars"]
        if not tags:
            continue
        start = created(file)
        end = max(max(e.wall_time for e in events.Scalars(tag)) for tag in tags)
        for tag in (t for t in tags if t.startswith("val/")):
            for event in events.Scalars(tag):
                row = rows.setdefault(event.step, {"step": event.step})
                row["hours"] = round(hours_before + (event.wall_time - start) / 3600, 3)
                row[tag] = round(event.value, 4)
        hours_before += (end - start) / 3600
    return [rows[step] for step in sorted(rows)]


def plot(curves: dict[str, tuple[list[dict], str]], out: Path, title: str, x: str) -> None:
    """Validation PSNR of each labelled curve (its rows, the val/psnr… tag drawn) against X ("hours" or "step")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for label, (curve, tag) in curves.items():
        points = [(row[x], row[tag]) for row in curve if tag in row]
        if not points:
            raise SystemExit(f"curve: {label or 'the run'} logged no {tag}; "
                             f"the tags logged: {sorted({t for row in curve for t in row if t.startswith('val/')})}")
        ax.plot([h for h, _ in points], [p for _, p in points], marker=".", lw=1, label=label or None)
    ax.set_xlabel("training time (hours)" if x == "hours" else "optimizer steps")
    ax.set_ylabel("validation PSNR (dB)")
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=Path, required=True, help="a run's logs/ folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path, default=None,
                        help="also draw val PSNR here, against hours (against steps with --against)")
    parser.add_argument("--metric", default="val/psnr", metavar="val/psnr[_keepK]",
                        help="the PSNR drawn for this run (val/psnr_keepK: an any-K run at K); the others' is val/psnr")
    parser.add_argument("--title", default="")
    parser.add_argument("--label", default="", help="this run's name in a figure with --against")
    parser.add_argument("--against", action="append", default=[], metavar="LABEL=LOGS",
                        help="another run's logs/ folder to draw beside it, against steps (repeatable)")
    args = parser.parse_args()
    if not args.metric.startswith("val/psnr"):
        parser.error(f"--metric {args.metric}: the figure is of PSNR; give val/psnr or val/psnr_keepK")
    against = {}
    for item in args.against:
        label, sep, logs = item.partition("=")
        if not sep or not label or not logs:
            parser.error(f"--against {item!r}: expected LABEL=LOGS, "
                         f"e.g. vqgan-f8=zoo/training/vqgan-photos-64-f8/logs")
        against[label] = {"logs": logs, "validations": validation_curve(Path(logs))}
    curve = validation_curve(args.logs)
    record = {"logs": str(args.logs), "validations": curve, "drawn": args.metric}
    if against:
        record["against"] = against
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    if args.plot:
        curves = {args.label: (curve, args.metric),
                  **{label: (run["validations"], "val/psnr") for label, run in against.items()}}
        plot(curves, args.plot, args.title, "step" if against else "hours")
    last = curve[-1] if curve else {}
    print(f"curve: {len(curve)} validations, last at step {last.get('step')} after {last.get('hours')} h")


if __name__ == "__main__":
    main()
