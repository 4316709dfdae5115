"""Model cards: the `README.md` of a pretrained folder, with front-matter the Hugging Face Hub reads.

A card says what the model is, what it was trained on (and under which licences), the command
that trained it, the hardware and wall time, and its metrics with the command that re-measures
them. Everything a program needs (the app's introduction, the zoo's metric test) is in the
front-matter, so `ModelCard.load` reads back exactly what `save` wrote; the body is for people.

    card = ModelCard(name="photos-64", summary="…", training_data="…", license="mit", …)
    card.save("zoo/photos-64")
    ModelCard.load("zoo/photos-64").metrics["psnr"]
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mvq.storage.atomic import atomic_write_text
from mvq.errors import UserError

CARD_FILE = "README.md"
# Where the app looks for example inputs in a tokenizer's folder (a few images of its validation data).
EXAMPLES_DIR = "examples"
# Separates the generated sections of a card's body from its free-form notes.
NOTES_MARKER = "<!-- notes -->"


@dataclass
class ModelCard:
    """What a person (and the app) should know about a pretrained model."""

    name: str
    summary: str                      # what the model is, one or two sentences
    training_data: str                # what it was trained on, one sentence, licences included
    license: str = "mit"              # the weights' licence (SPDX id, as the Hub expects)
    datasets: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    command: str = ""                 # the exact command that trained it
    hardware: str = ""
    wall_time: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_command: str = ""         # the command that measures `metrics` again
    superseded_by: str = ""           # the zoo model that now does this one's job (this one kept for comparisons)
    notes: str = ""                   # more Markdown for the body (figures, comparisons, limits)

    def front_matter(self) -> dict:
        """The Hub's keys, and mvq's own under `mvq:` (all but the free-form notes)."""
        own = {k: v for k, v in dataclasses.asdict(self).items()
               if k not in ("license", "datasets", "tags", "notes") and (v or k != "superseded_by")}
        return {"library_name": "mvq", "license": self.license, "datasets": self.datasets,
                "tags": ["mvq", *self.tags], "mvq": own}

    def markdown(self) -> str:
        lines = [f"# {self.name}", "", self.summary, ""]
        if self.superseded_by:
            lines += [f"**Superseded by [`{self.superseded_by}`](../{self.superseded_by}/README.md)**, which does "
                      f"the same job at least as well; this model stays loadable for the comparisons that name it.",
                      ""]
        lines += ["## Training data", "", self.training_data, ""]
        if self.command:
            lines += ["## How it was trained", "", "```bash", self.command, "```", ""]
        if self.hardware or self.wall_time:
            lines += [f"Hardware: {self.hardware or 'not recorded'}. Wall time: {self.wall_time or 'not recorded'}.",
                      ""]
        if self.metrics:
            lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
            lines += [f"| {key} | {value:.4g} |" for key, value in self.metrics.items()]
            lines += [""]
            if self.metrics_command:
                lines += ["Measured again by:", "", "```bash", self.metrics_command, "```", ""]
        if self.notes:
            lines += [NOTES_MARKER, self.notes.strip(), ""]
        header = yaml.safe_dump(self.front_matter(), sort_keys=False, allow_unicode=True)
        return f"---\n{header}---\n\n" + "\n".join(lines)

    def save(self, folder: str | os.PathLike) -> Path:
        return atomic_write_text(Path(folder) / CARD_FILE, self.markdown())

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ModelCard | None:
        """The card of a pretrained folder (None when it has no README.md with mvq front-matter)."""
        path = Path(folder) / CARD_FILE
        if not path.is_file():
            return None
        text = path.read_text(encoding="utf-8")
        if not text.startswith("---\n") or "\n---\n" not in text[4:]:
            return None
        try:
            header = yaml.safe_load(text[4:text.index("\n---\n", 4)])
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: the model card's front-matter is not valid YAML ({exc}); fix or remove it") \
                from None
        if not isinstance(header, dict) or not isinstance(header.get("mvq"), dict):
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in header["mvq"].items() if k in known}
        body = text[text.index("\n---\n", 4) + 5:]
        return cls(license=header.get("license", "mit"), datasets=list(header.get("datasets") or []),
                   tags=[t for t in header.get("tags") or [] if t != "mvq"], notes=_notes(body), **values)


def _notes(body: str) -> str:
    """The free-form part of a card's body: what follows the marker after the generated sections."""
    return body.split(NOTES_MARKER, 1)[1].strip() if NOTES_MARKER in body else ""


def example_images(folder: str | os.PathLike, subfolder: str = EXAMPLES_DIR) -> list[Path]:
    """The example inputs kept in a tokenizer's folder (`examples/*.png`), in name order."""
    examples = Path(folder) / subfolder
    return sorted(examples.glob("*.png")) if examples.is_dir() else []
