"""Conversion of the reference release's checkpoints and configs into mvq's."""

from mvq.convert.mqvae import config_from_original, from_original

__all__ = ["config_from_original", "from_original"]
