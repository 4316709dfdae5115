"""The zoo's pairs and checks: which zoo tokenizer a zoo Stackformer belongs to (the one whose weights
fingerprint its tokenizer.json records), and the numbers a released model must reproduce on its examples.

`mvq app` without folders serves `first_pair()`; `MVQPipeline.from_pretrained(NAME)` without a
tokenizer loads `tokenizer_of(NAME)`; `tests/test_zoo.py` recomputes `example_check`. Zoo models are
found as `mvq.models.hub.zoo_models` finds them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvq.errors import UserError
from mvq.models.card import ModelCard, example_images
from mvq.models.hub import resolve_pretrained, zoo_models
from mvq.models.stackformer import Stackformer
from mvq.models.pretrained import read_pretrained_config, read_tokenizer_record, weights_fingerprint
from mvq.models.tokenizer import ARCHITECTURES, load_tokenizer


def zoo_tokenizers() -> dict[str, Path]:
    """The zoo's tokenizers (MQ-VAEs and VQGANs), name → folder: those in use first, then the superseded."""
    tokenizers = {name: folder for name, folder in zoo_models().items()
                  if read_pretrained_config(folder).get("model_type") in ARCHITECTURES}

    def superseded(name: str) -> bool:
        card = ModelCard.load(tokenizers[name])
        return card is not None and bool(card.superseded_by)

    return {name: tokenizers[name] for name in sorted(tokenizers, key=superseded)}


def tokenizer_of(stackformer: str | os.PathLike) -> Path | None:
    """The zoo tokenizer whose tokens the Stackformer (a folder, zoo name or Hub id) learnt, or None."""
    record = read_tokenizer_record(stackformer)
    if record is None:
        return None
    for folder in zoo_tokenizers().values():
        if weights_fingerprint(load_tokenizer(folder)) == record["tokenizer_fingerprint"]:
            return folder
    return None


def first_pair() -> tuple[Path, Path] | None:
    """The first zoo Stackformer (by name) whose tokenizer is in the zoo too, as (tokenizer, Stackformer)."""
    for name, folder in zoo_models().items():
        if read_pretrained_config(folder).get("model_type") not in ARCHITECTURES:
            tokenizer = tokenizer_of(folder)
            if tokenizer is not None:
                return tokenizer, resolve_pretrained(folder)
    return None


def example_images_tensor(tokenizer: str | os.PathLike) -> torch.Tensor:
    """A zoo tokenizer's example images (`examples/*.png`, name order) as one B×3×R×R batch in [-1, 1]."""
    paths = example_images(resolve_pretrained(tokenizer))
    if not paths:
        raise UserError(f"{tokenizer} has no example images (examples/*.png)")
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1


@torch.no_grad()
def example_check(tokenizer: str | os.PathLike, stackformer: str | os.PathLike | None = None,
                  labels: list[int] | None = None) -> dict[str, list[float] | float]:
    """What the zoo's metric test recomputes on a released model's few fixed example images.

    A tokenizer: the PSNR (dB) of each example's reconstruction. A Stackformer: its teacher-forced
    NLL (nats per image, codes + positions) of the examples' tokens, with their `labels` when it is
    class-conditional. A damaged weights file or a changed model moves these numbers.
    """
    vae = load_tokenizer(resolve_pretrained(tokenizer)).eval()
    images = example_images_tensor(tokenizer)
    if stackformer is None:
        mse = (vae(images).reconstruction.clamp(-1, 1) - images).pow(2).mean(dim=(1, 2, 3)) / 4  # in [0, 1] units
        return {"examples_psnr": (-10 * torch.log10(mse)).tolist()}
    model = Stackformer.from_pretrained(resolve_pretrained(stackformer)).eval()
    order = model.config.token_order
    codes, positions = vae.tokenize(images) if order == "raster" else vae.tokenize(images, order=order)
    label_tensor = torch.tensor(labels) if model.config.num_classes else None
    return {"examples_nll_nats": -float(model.log_likelihood(codes, positions, label_tensor).mean())}
