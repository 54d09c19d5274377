"""DC-AE wrapper (E and D of Eq. 1 / 15): images in [0, 1] <-> scaled latents, with pad-and-crop.

Tensor contract: images are float (B, 3, H, W) in [0, 1]; latents are (B, C, H/f, W/f) already multiplied by
the config's scaling factor (0.41407 for the SANA DC-AE). The spatial factor f is the VAE's own
`spatial_compression_ratio` (32 for f32c32, 8 for tiny); inputs of any size are padded to a multiple of f
(reflection where the image is large enough, else edge replication) and outputs cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderDC


class LatentCodec:
    def __init__(self, vae: AutoencoderDC):
        self.vae = vae.eval().requires_grad_(False)
        self.factor: int = int(vae.spatial_compression_ratio)
        self.scaling_factor: float = float(vae.config.scaling_factor)
        self.latent_channels: int = int(vae.config.latent_channels)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        f = self.factor
        return -(-height // f) * f, -(-width // f) * f

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """Pad (B, C, H, W) on the bottom/right to a multiple of the factor."""
        h, w = images.shape[-2:]
        ph, pw = self.padded_size(h, w)
        if (ph, pw) == (h, w):
            return images
        mode = "reflect" if (ph - h) < h and (pw - w) < w else "replicate"
        return F.pad(images, (0, pw - w, 0, ph - h), mode=mode)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """E(x): (B, 3, H, W) in [0, 1], H and W multiples of the factor -> scaled latents."""
        h, w = images.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(
                f"encode needs sizes that are multiples of {self.factor}, got {h}x{w}; call pad() first"
            )
        x = images.to(self.vae.dtype) * 2 - 1
        return self.vae.encode(x).latent * self.scaling_factor

    def decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """D(z): scaled latents -> (B, 3, H, W), float32, in [0, 1] when `clamp` (training keeps the raw range
        so gradients do not vanish at saturated pixels)."""
        x = self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor).sample
        x = (x.float() + 1) / 2
        return x.clamp(0, 1) if clamp else x

    def encode_padded(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(self.pad(images))

    @staticmethod
    def crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return images[..., :height, :width]
