"""Colour fix of the restored image against the bicubic-upsampled input (`--color-fix wavelet|adain|none`).

One-step diffusion SR can shift colours (the VAE and the prior drift the low frequencies). Both fixes take the
colour from the bicubic input x_L and the detail from the restored x_hat:
- wavelet (default, as in StableSR / OSEDiff / SeeSR): keep x_hat's high-frequency layers of an a-trous
  wavelet decomposition and replace its lowest layer with x_L's. Local: it also fixes shifts that vary across
  the image
  (e.g. tile-to-tile), and it cannot add the bicubic blur back because only the coarsest layer is taken.
- adain: match x_hat's per-channel mean and standard deviation to x_L's. Global only: cheaper, keeps more of
  the model's own colours, but misses local shifts.
Tensor contract: (B, 3, H, W) or (3, H, W) float in [0, 1], same shape for both; returns float32 in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("wavelet", "adain", "none")


def _batched(x: torch.Tensor) -> torch.Tensor:
    return x if x.ndim == 4 else x[None]


def adain_color_fix(restored: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    r, ref = _batched(restored).float(), _batched(reference).float().to(restored.device)
    r_mean, r_std = r.mean((-2, -1), keepdim=True), r.std((-2, -1), keepdim=True, correction=0)
    f_mean, f_std = ref.mean((-2, -1), keepdim=True), ref.std((-2, -1), keepdim=True, correction=0)
    out = ((r - r_mean) / (r_std + eps) * f_std + f_mean).clamp(0, 1)
    return out if restored.ndim == 4 else out[0]


def _wavelet_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """3x3 binomial blur with dilation `radius` (one a-trous level); replicate padding works at any size.
    Written as separable shifted sums: a dilated depthwise conv2d is ~100x slower on CPU."""
    h, w = x.shape[-2:]
    p = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    rows = (p[..., :h, :] + 2 * p[..., radius : radius + h, :] + p[..., 2 * radius : 2 * radius + h, :]) / 4
    return (rows[..., :w] + 2 * rows[..., radius : radius + w] + rows[..., 2 * radius : 2 * radius + w]) / 4


def wavelet_decompose(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low): x = high + low, low = the a-trous residual after `levels` blurs (radii 1, 2, 4, ...)."""
    low = x
    for i in range(levels):
        low = _wavelet_blur(low, 2**i)
    return x - low, low


def wavelet_color_fix(restored: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    r, ref = _batched(restored).float(), _batched(reference).float().to(restored.device)
    high, _ = wavelet_decompose(r, levels)
    _, low = wavelet_decompose(ref, levels)
    out = (high + low).clamp(0, 1)
    return out if restored.ndim == 4 else out[0]


def color_fix(restored: torch.Tensor, reference: torch.Tensor, method: str = "wavelet") -> torch.Tensor:
    if method == "wavelet":
        return wavelet_color_fix(restored, reference)
    if method == "adain":
        return adain_color_fix(restored, reference)
    if method == "none":
        return restored.float()
    raise ValueError(f"unknown colour fix '{method}'; use one of {', '.join(COLOR_FIXES)}")
