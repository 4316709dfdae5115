"""Everything about the reference release's formats, translated into mvq's.

- `mqvae`, `stackformer`: their model configs and state dicts → ours.
- `losses`: their stage-1 loss parameters and discriminator weights → ours.
- `names`: their config key names that our configs accept too.
- `checkpoint`: their Lightning checkpoint + YAML → an mvq pretrained folder (`mvq convert-original`).
- `train_args`: their `train.py` command line → `mvq train` (the repository's `train.py`).
- `layout`: telling their config layout from ours.

Nothing outside this package knows the reference's names or layouts.
"""

from mvq.convert.mqvae import config_from_original, from_original

__all__ = ["config_from_original", "from_original"]
