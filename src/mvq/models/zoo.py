"""Which zoo tokenizer a zoo Stackformer belongs to: the one whose weights fingerprint its tokenizer.json records.

`mvq app` without folders serves `first_pair()`; `MVQPipeline.from_pretrained(NAME)` without a
tokenizer loads `tokenizer_of(NAME)`. Zoo models are found as `mvq.models.hub.zoo_models` finds them.
"""

from __future__ import annotations

import os
from pathlib import Path

from mvq.models.hub import resolve_pretrained, zoo_models
from mvq.models.pretrained import read_pretrained_config, read_tokenizer_record, weights_fingerprint
from mvq.models.tokenizer import ARCHITECTURES, load_tokenizer


def _tokenizers() -> dict[str, Path]:
    return {name: folder for name, folder in zoo_models().items()
            if read_pretrained_config(folder).get("model_type") in ARCHITECTURES}


def tokenizer_of(stackformer: str | os.PathLike) -> Path | None:
    """The zoo tokenizer whose tokens the Stackformer (a folder, zoo name or Hub id) learnt, or None."""
    record = read_tokenizer_record(stackformer)
    if record is None:
        return None
    for folder in _tokenizers().values():
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
