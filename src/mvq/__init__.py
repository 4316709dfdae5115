"""mvq: masked vector quantization (MQ-VAE + Stackformer) for autoregressive image generation.

Importing `mvq` is light; the models are loaded on first use of `mvq.MQVAE` etc.

Where things happen:

- the mask is chosen (which cells become tokens): `mvq.nn.masker` (`AdaptiveMasker.forward`)
- a token is sampled: `mvq.models.sampling` (`sample_from_logits`, called from `generate`)
- a checkpoint is written: `mvq.training.checkpoints` (`AtomicCheckpointIO.save_checkpoint`)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "MQVAE": "mvq.models.mqvae",
    "MQVAEConfig": "mvq.models.mqvae",
    "Stackformer": "mvq.models.stackformer",
    "StackformerConfig": "mvq.models.stackformer",
    "VQGAN": "mvq.models.vqgan",
    "VQGANConfig": "mvq.models.vqgan",
    "MVQPipeline": "mvq.inference.pipeline",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mvq' has no attribute {name!r}")
