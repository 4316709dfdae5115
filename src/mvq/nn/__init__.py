"""Building blocks of the MQ-VAE and the VQGAN: encoder/decoder, mask, quantizers, de-mask."""

from mvq.nn.demasker import DEMASK_ATTENTIONS, MASK_UPDATES, AdaptiveDemasker, DirectionConstrainedAttention
from mvq.nn.masker import MASK_CHOICES, AdaptiveMasker, MaskerOutput, RandomMasker, build_masker
from mvq.nn.quantizer import EMAVectorQuantizer, LearnedVectorQuantizer
from mvq.nn.vqgan import Decoder, Encoder

__all__ = ["DEMASK_ATTENTIONS", "MASK_CHOICES", "MASK_UPDATES", "AdaptiveDemasker", "AdaptiveMasker", "Decoder",
           "DirectionConstrainedAttention", "EMAVectorQuantizer", "Encoder", "LearnedVectorQuantizer",
           "MaskerOutput", "RandomMasker", "build_masker"]
