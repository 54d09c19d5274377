"""Resampling shared by inference and training (kept free of model imports so data loaders stay light)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_bicubic(image: torch.Tensor, scale: float) -> torch.Tensor:
    """(3, H, W) or (B, 3, H, W) in [0, 1] -> bicubic x scale (rounded sizes), clamped to [0, 1]."""
    batched = image.ndim == 4
    x = image if batched else image[None]
    h, w = x.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    y = F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False).clamp_(0, 1)
    return y if batched else y[0]
