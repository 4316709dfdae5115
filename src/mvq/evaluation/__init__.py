"""Evaluation of tokenizers and generators: rFID, FID, IS, KID, PSNR, SSIM, LPIPS, codebook usage.

FID/IS/KID use torch-fidelity's Inception (its port of the TensorFlow FID network); LPIPS
uses the `lpips` package with a VGG16 trunk. Weights are found offline (`mvq.weights`).
"""

from mvq.evaluation.codebook import code_counts, codebook_usage, codebook_usage_from_counts
from mvq.evaluation.frechet import (GaussianAccumulator, frechet_distance, has_statistics, load_statistics,
                                    save_statistics)
from mvq.evaluation.generation import FID_IMAGE_COUNT, evaluate_generation, reference_statistics, run_inception
from mvq.evaluation.image_metrics import from_uint8, lpips_distance, psnr, ssim, to_uint8
from mvq.evaluation.images import ImageFolder, ImageSet, NumpyImages, evaluation_indices, fit_resolution
from mvq.evaluation.inception import InceptionV3
from mvq.evaluation.reconstruction import evaluate_reconstruction
from mvq.evaluation.scores import inception_score, kernel_inception_distance
from mvq.evaluation.tokenizer_stats import TokenizerStatistics


__all__ = [
    "FID_IMAGE_COUNT", "GaussianAccumulator", "ImageFolder", "ImageSet", "InceptionV3", "NumpyImages",
    "TokenizerStatistics", "code_counts", "codebook_usage", "codebook_usage_from_counts", "evaluate_generation",
    "evaluate_reconstruction", "evaluation_indices", "fit_resolution", "frechet_distance",
    "from_uint8", "inception_score", "has_statistics", "kernel_inception_distance", "load_statistics",
    "lpips_distance", "psnr", "reference_statistics", "run_inception", "save_statistics", "ssim", "to_uint8",
]
