"""Everything about the reference release's formats, translated into mvq's.

- `mqvae`, `stackformer`: their model configs and state dicts → ours.
- `losses`: their `loss.*` weights split off the model's, and their discriminator weights → ours.
- `names`: their config key names that our configs accept too.
- `checkpoint`: their Lightning checkpoint + YAML → an mvq pretrained folder (`mvq convert-original`).
- `train_args`: their `train.py` command line → `mvq train` (the repository's `train.py`).
- `layout`: telling their config layout from ours.
- `weights`: loading converted weights, a mismatch told as the checkpoint's.
- `taming`: taming-transformers' VQGAN (config and state dict) → `mvq.VQGAN`.

Nothing outside this package knows the reference's names or layouts.
"""

from mvq.convert.mqvae import config_from_original, from_original
from mvq.convert.taming import from_taming, taming_state_dict, vqgan_config_from_taming

__all__ = ["config_from_original", "from_original", "from_taming", "taming_state_dict", "vqgan_config_from_taming"]
