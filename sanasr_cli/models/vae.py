"""DC-AE wrapper (E and D of Eq. 1 / 15): images in [0, 1] <-> scaled latents, with pad-and-crop.

Tensor contract: images are float (B, 3, H, W) in [0, 1]; latents are (B, C, H/f, W/f) already multiplied by
the config's scaling factor (0.41407 for the SANA DC-AE). The spatial factor f is the VAE's own
`spatial_compression_ratio` (32 for f32c32, 8 for tiny); inputs of any size are padded to a multiple of f
(reflection where the image is large enough, else edge replication) and outputs cropped back.

Students (`sanasr distill`, models/students.py): a codec may carry an LQ-native encoder and/or a light decoder.
`encode` is always the teacher E (training and the distillation targets use it); `encode_lq` reads the LQ image
(the student when present, else the teacher on the x4 bicubic image), `decode` is the student decoder when
present and `teacher_decode` always the teacher D. `without_students()` is the teacher codec (`--full-vae`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderDC


def pad_to_multiple(images: torch.Tensor, f: int) -> torch.Tensor:
    """Pad (B, C, H, W) on the bottom/right to multiples of f: reflection where the image is large enough, else edge
    replication (reflect cannot pad by more than the side)."""
    h, w = images.shape[-2:]
    ph, pw = -(-h // f) * f, -(-w // f) * f
    if (ph, pw) == (h, w):
        return images
    mode = "reflect" if (ph - h) < h and (pw - w) < w else "replicate"
    return F.pad(images, (0, pw - w, 0, ph - h), mode=mode)


class LatentCodec:
    def __init__(self, vae: AutoencoderDC, lq_encoder=None, light_decoder=None):
        self.vae = vae.eval().requires_grad_(False)
        self.factor: int = int(vae.spatial_compression_ratio)
        self.scaling_factor: float = float(vae.config.scaling_factor)
        self.latent_channels: int = int(vae.config.latent_channels)
        self.lq_encoder = lq_encoder.eval().requires_grad_(False) if lq_encoder is not None else None
        self.light_decoder = light_decoder.eval().requires_grad_(False) if light_decoder is not None else None

    @property
    def encodes_lq(self) -> bool:
        """True when a student encoder reads the LQ image (the x4 bicubic image is then not encoded)."""
        return self.lq_encoder is not None

    @property
    def lq_factor(self) -> int:
        """LQ pixels per latent pixel for the x4 model: factor / 4 (the student encoder's grid)."""
        return max(1, self.factor // 4)

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.vae, self.lq_encoder, self.light_decoder) if m is not None]

    def to(self, device=None, dtype=None) -> LatentCodec:
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        return self

    def without_students(self) -> LatentCodec:
        """The teacher codec on the same VAE (what `--full-vae` runs)."""
        return LatentCodec(self.vae)

    def pad_lq(self, lq: torch.Tensor) -> torch.Tensor:
        """Pad an LQ batch on the bottom/right to a multiple of `lq_factor` (so 4x it is a multiple of factor)."""
        return pad_to_multiple(lq, self.lq_factor)

    def encode_lq(self, lq: torch.Tensor) -> torch.Tensor:
        """z_L from the LQ batch (B, 3, h, w) in [0, 1], h and w multiples of `lq_factor`: the student encoder's
        prediction, or (no student) the teacher on the x4 bicubic image. Scaled latents (B, C, 4h/f, 4w/f)."""
        if self.lq_encoder is None:
            from sanasr_cli.data.resample import upsample_bicubic

            return self.encode_padded(upsample_bicubic(lq, 4))
        h, w = lq.shape[-2:]
        if h % self.lq_factor or w % self.lq_factor:
            raise ValueError(f"encode_lq needs sizes that are multiples of {self.lq_factor}, got {h}x{w}")
        return self.lq_encoder(lq).float()

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        f = self.factor
        return -(-height // f) * f, -(-width // f) * f

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """Pad (B, C, H, W) on the bottom/right to a multiple of the factor."""
        return pad_to_multiple(images, self.factor)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """E(x): (B, 3, H, W) in [0, 1], H and W multiples of the factor -> scaled latents."""
        h, w = images.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"encode needs sizes that are multiples of {self.factor}, got {h}x{w}; call pad() first")
        x = images.to(self.vae.dtype) * 2 - 1
        return self.vae.encode(x).latent * self.scaling_factor

    def decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """D(z): scaled latents -> (B, 3, H, W), float32, in [0, 1] when `clamp` (training keeps the raw range
        so gradients do not vanish at saturated pixels). The student decoder when the codec carries one."""
        if self.light_decoder is None:
            return self.teacher_decode(latents, clamp)
        x = (self.light_decoder(latents).float() + 1) / 2
        return x.clamp(0, 1) if clamp else x

    def teacher_decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """The teacher D(z), whatever students the codec carries."""
        x = self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor).sample
        x = (x.float() + 1) / 2
        return x.clamp(0, 1) if clamp else x

    def encode_padded(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(self.pad(images))

    @staticmethod
    def crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return images[..., :height, :width]
