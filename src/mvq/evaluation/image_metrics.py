"""Per-image reconstruction metrics: PSNR, SSIM and LPIPS (the network is mvq.losses.perceptual.LPIPS).

All functions take two batches of the same shape B×C×H×W and return one value per image,
so callers can average, shard and gather as they like. uint8 images use a data range of
255; float images are taken to be in [-1, 1] (data range 2). `to_uint8`/`from_uint8` keep the
channels-first layout of the models; the `_hwc` pair converts to and from image files' H×W×3.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mvq.losses.perceptual import LPIPS


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images → uint8 in [0, 255] (clamped and rounded, as a saved PNG would be)."""
    return ((images.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [-1, 1]."""
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """B×3×H×W images in [-1, 1] → B×H×W×3 uint8 array, the layout of image files and FID `.npz`s."""
    return to_uint8(images.float()).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8_hwc(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels H×W×3 or B×H×W×3 (image files' layout) → float32 B×3×H×W in [-1, 1]."""
    pixels = torch.as_tensor(pixels)
    if pixels.dim() == 3:
        pixels = pixels[None]
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected uint8 pixels H×W×3 or B×H×W×3, got {pixels.dtype} {tuple(pixels.shape)}")
    return from_uint8(pixels.permute(0, 3, 1, 2))


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two B×C×H×W batches of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"both batches must have the same dtype, got {a.dtype} and {b.dtype}")
    data_range = 255.0 if a.dtype == torch.uint8 else 2.0
    return a.to(torch.float64), b.to(torch.float64), data_range


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (+inf for identical images)."""
    a, b, data_range = _pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004): Gaussian 11×11 window with σ = 1.5,
    K1 = 0.01, K2 = 0.03, over the positions where the window fits inside the image ("valid"),
    averaged over positions and channels. 1 for identical images.
    """
    a, b, data_range = _pair(a, b)
    channels, height, width = a.shape[1:]
    if min(height, width) < window_size:
        raise ValueError(f"SSIM needs images of at least {window_size}×{window_size} pixels, got {height}×{width}")
    g = _gaussian_window(window_size, sigma, a.device)

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable Gaussian filter, one channel at a time
        x = F.conv2d(x, g.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return F.conv2d(x, g.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(1)


def lpips_distance(a: torch.Tensor, b: torch.Tensor, model: torch.nn.Module | None = None,
                   net: str = "vgg", weights: str | None = None) -> torch.Tensor:
    """LPIPS distance per image between two [-1, 1] batches (0 for identical images).

    `net` is the trunk, "vgg" or "alex" (LPIPS v0.1 heads either way); `weights` an explicit
    trunk file (default: the installed one, see `mvq weights status`). Pass a built
    `mvq.losses.perceptual.LPIPS` as `model` when calling this repeatedly.
    """
    if model is None:
        model = LPIPS(weights, net=net).to(a.device)
    return model(a, b)
