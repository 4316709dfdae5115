#!/usr/bin/env python
"""The reference release's training command line, forwarded to `mvq train`.

    python train.py --gpus -1 --base configs/stage1/mqvae_imagenet_f8_r25.yml --max_epochs 50

`mvq.convert.train_args` maps the reference's options and key names onto mvq's.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from mvq.cli import main
    from mvq.convert.train_args import translate
    from mvq.errors import UserError

    try:
        arguments = translate(sys.argv[1:])
    except UserError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        raise SystemExit(1)
    main(arguments)
