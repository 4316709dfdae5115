"""Evaluation of tokenizers and generators: rFID, FID, IS, KID, PSNR, SSIM, LPIPS, codebook usage.

FID/IS/KID use torch-fidelity's Inception (its port of the TensorFlow FID network); LPIPS
uses the `lpips` package with a VGG16 trunk. Weights are found offline (`mvq.storage.network_weights`).
"""

from mvq.evaluation.codebook import code_counts, codebook_usage, codebook_usage_from_counts
from mvq.evaluation.frechet import (GaussianAccumulator, check_statistics, frechet_distance, has_statistics,
                                    load_statistics, save_statistics)
from mvq.evaluation.generation import (FID_IMAGE_COUNT, GenerationInputs, ReferenceImages, evaluate_generation,
                                       image_statistics, open_generation_inputs, reference_statistics, run_inception,
                                       score_generation)
from mvq.evaluation.image_metrics import from_uint8, lpips_distance, psnr, ssim, to_uint8
from mvq.evaluation.images import ImageFolder, ImageSet, NumpyImages, evaluation_indices, fit_resolution
from mvq.evaluation.inception import InceptionV3
from mvq.evaluation.reconstruction import evaluate_reconstruction
from mvq.evaluation.scores import inception_score, kernel_inception_distance
from mvq.evaluation.tokenizer_stats import TokenizerStatistics


__all__ = [
    "FID_IMAGE_COUNT", "GaussianAccumulator", "GenerationInputs", "ImageFolder", "ImageSet", "InceptionV3",
    "NumpyImages", "ReferenceImages", "TokenizerStatistics", "check_statistics", "code_counts", "codebook_usage",
    "codebook_usage_from_counts", "evaluate_generation",
    "evaluate_reconstruction", "evaluation_indices", "fit_resolution", "frechet_distance",
    "from_uint8", "inception_score", "has_statistics", "image_statistics", "kernel_inception_distance",
    "load_statistics", "lpips_distance", "open_generation_inputs", "psnr", "reference_statistics", "run_inception",
    "save_statistics", "score_generation", "ssim", "to_uint8",
]
