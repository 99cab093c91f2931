"""Video similarity: PSNR and SSIM of a video against a reference video.

Both take videos ``[n, 3, T, H, W]`` in [-1, 1] (the sampler's output), clamp them to [-1, 1] and
map them to [0, 1] (data range 1), and return one value per video:

- PSNR: ``10 log10(1 / MSE)`` over all pixels, channels and frames of the video (``inf`` for
  identical videos);
- SSIM: the SSIM of Wang et al. (2004) per frame and channel, Gaussian window 11 x 11 with sigma
  1.5, ``C1 = 0.01^2``, ``C2 = 0.03^2``, valid positions only (no padding), averaged over
  positions, channels and frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _unit(video: torch.Tensor) -> torch.Tensor:
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"video: expected [n, 3, T, H, W], got {tuple(video.shape)}")
    return (video.double().clamp(-1, 1) + 1) / 2


def _check_pair(video: torch.Tensor, reference: torch.Tensor) -> None:
    if video.shape != reference.shape:
        raise ValueError(f"reference: expected shape {tuple(video.shape)} (the video's), got {tuple(reference.shape)}")


def psnr(video: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each video against its reference, ``[n]`` float64 (``inf`` where identical)."""
    _check_pair(video, reference)
    mse = ((_unit(video) - _unit(reference)) ** 2).flatten(1).mean(dim=1)
    return torch.where(mse > 0, 10 * torch.log10(1 / mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(video: torch.Tensor, reference: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of each video against its reference, ``[n]`` float64 (1 where identical)."""
    _check_pair(video, reference)
    n, c, t, h, w = video.shape
    if h < window or w < window:
        raise ValueError(f"video: frames must be at least {window}x{window} for SSIM, got {h}x{w}")
    x = _unit(video).permute(0, 2, 1, 3, 4).reshape(n * t * c, 1, h, w)
    y = _unit(reference).permute(0, 2, 1, 3, 4).reshape(n * t * c, 1, h, w)
    g = _gaussian_window(window, sigma).to(x.device)
    kernel_h, kernel_w = g.view(1, 1, window, 1), g.view(1, 1, 1, window)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, kernel_h), kernel_w)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(n, -1).mean(dim=1)
