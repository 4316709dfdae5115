#!/usr/bin/env python
"""The reference release's training command line, forwarded to `mvq train`.

    python train.py --gpus -1 --base configs/stage1/mqvae_imagenet_f8_r25.yml --max_epochs 50

`--base X.yml` finds mvq's `X.yaml` of the same stem; `--gpus`, `--max_epochs`, `--seed`,
`--resume` and trailing `key=value` overrides (mvq's keys, or the reference's own names for
the commonly tuned ones, such as model.params.masker_config.params.topk_ratio) are mapped.
"""

from __future__ import annotations

import sys

from mvq.commands.reference_args import translate

if __name__ == "__main__":
    from mvq.cli import main

    main(translate(sys.argv[1:]))
