"""Building blocks of the MQ-VAE: VQGAN encoder/decoder, adaptive mask, quantizer, de-mask."""

from mvq.nn.demasker import AdaptiveDemasker, DirectionConstrainedAttention
from mvq.nn.masker import AdaptiveMasker, MaskerOutput
from mvq.nn.quantizer import EMAVectorQuantizer
from mvq.nn.vqgan import Decoder, Encoder

__all__ = ["AdaptiveDemasker", "AdaptiveMasker", "Decoder", "DirectionConstrainedAttention", "EMAVectorQuantizer",
           "Encoder", "MaskerOutput"]
