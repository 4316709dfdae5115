"""The demo's report: loss-curve plots and a self-contained `index.html`."""

from __future__ import annotations

import html
import math
from pathlib import Path

from mvq.storage.atomic import atomic_write, atomic_write_text


def read_scalars(log_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """All scalar series of a TensorBoard log folder: tag → (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
            for tag in events.Tags()["scalars"]}


def plot_curves(series: dict[str, tuple[list[int], list[float]]], tags: list[str], title: str, path: Path) -> Path:
    """One PNG with the given scalar tags against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for tag in tags:
        if tag in series:
            steps, values = series[tag]
            ax.plot(steps, values, label=tag, marker="o" if len(steps) < 20 else None)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
img { image-rendering: pixelated; border: 1px solid #ccc; } .figure { overflow-x: auto; }
img.plot { max-width: 100%; }
table { border-collapse: collapse; } td, th { padding: 4px 10px; border-bottom: 1px solid #eee; text-align: left; }
.note { color: #555; } .pass { color: #17803d; } .fail { color: #b42318; }
"""


def format_metric(value: object) -> str:
    """A metric as a person reads it: 4 significant digits, whole numbers whole, "—" for not measured."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "—"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _figure(out_dir: Path, section: dict) -> str:
    """A section's picture at its own size (width and height given: the browser never rescales a figure of
    pictures); plots (`"plot": True`) may shrink to the page."""
    from PIL import Image

    with Image.open(out_dir / section["image"]) as image:
        width, height = image.size
    kind = ' class="plot"' if section.get("plot") else ""
    return (f"<div class=figure><img{kind} src=\"{html.escape(section['image'])}\" width={width} height={height} "
            f"alt=\"{html.escape(section['title'])}\"></div>")


def write_index(out_dir: Path, title: str, sections: list[dict], metrics: dict, checks: list[dict]) -> Path:
    """Write `index.html`. Each section: {"title", "text", "image" (path relative to out_dir), "plot" (optional)}."""
    rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{c['value']:.4g}</td><td>{html.escape(c['target'])}</td>"
        f"<td class=\"{'pass' if c['passed'] else 'fail'}\">{'pass' if c['passed'] else 'below target'}</td></tr>"
        for c in checks)
    body = [f"<h1>{html.escape(title)}</h1>",
            "<p class=note>Everything on this page was produced by <code>mvq demo</code> on this machine.</p>",
            "<h2>Quality checks</h2><table><tr><th>measure</th><th>value</th><th>target</th><th></th></tr>"
            f"{rows}</table>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section['title'])}</h2><p class=note>{html.escape(section['text'])}</p>")
        body.append(_figure(out_dir, section))
    body.append("<h2>All metrics</h2><p class=note>Every number of <code>metrics.json</code>, one line each.</p>"
                "<table><tr><th>key</th><th>value</th></tr>"
                + "".join(f"<tr><td><code>{html.escape(key)}</code></td><td>{html.escape(format_metric(value))}</td></tr>"
                          for key, value in metrics.items()) + "</table>")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    return atomic_write_text(out_dir / "index.html", page)
