"""Stage autoencoder (nano's base): the nano DC-AE (diffusers AutoencoderDC, f4c16) trained as an autoencoder on
HQ crops of nano v1's train photos with a pixel loss (MSE + 0.5 L1 on [-1, 1] pixels; no pretrained perceptual
network is available offline). Its scaling_factor is set to 1 / std of its latents, as SANA's DC-AE config
carries one. Writes WORK/base/vae; reports the reconstruction PSNR of the held-out photos (measured only).

    python -m recipes.nano --work WORK --stage autoencoder [--ae-steps 3000]
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from recipes.nano.loop import train_loop
from recipes.nano.v1_photos import photo_tensors, v1_root
from sanasr_cli.models.presets import PRESETS

PRESET = PRESETS["nano"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """RGB PSNR (dB) of a (clamped to [0, 1]) against b."""
    return float(10 * torch.log10(1 / F.mse_loss(a.clamp(0, 1), b)))


def stage_autoencoder(
    work: Path, seed: int, steps: int, batch: int = 8, crop: int = 32, lr: float = 2e-3, log=print
) -> dict:
    from diffusers import AutoencoderDC

    from sanasr_cli.data.io import read_image
    from sanasr_cli.models.vae import LatentCodec
    from sanasr_cli.training.distill import random_crops

    torch.manual_seed(seed)
    vae = AutoencoderDC(**PRESET.vae)
    train = photo_tensors(work, "train")

    def step_fn(g):
        x = random_crops(train, crop, batch, g) * 2 - 1
        y = vae.decode(vae.encode(x).latent).sample
        return F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x)

    start = time.time()
    # small crops, many steps, a high rate without clipping: measured fastest to a good reconstruction on 1 core
    history = train_loop("autoencoder", work, vae, steps, lr, step_fn, seed, save_every=500, clip=0, log=log)
    with torch.no_grad():  # scaling factor: 1 / std of the latents of train crops
        g = torch.Generator().manual_seed(seed + 1)
        z = torch.cat([vae.encode(random_crops(train, 128, 8, g) * 2 - 1).latent for _ in range(8)])
        scaling = float(1 / z.std())
    vae.register_to_config(scaling_factor=round(scaling, 5))
    vae.save_pretrained(str(work / "base" / "vae"), safe_serialization=True)
    report = dict(
        steps=steps,
        batch=batch,
        crop=crop,
        loss="mse + 0.5 l1 on [-1, 1] pixels",
        lr=lr,
        seconds=round(time.time() - start, 1),
        final_loss=sum(history[-50:]) / 50,
        scaling_factor=round(scaling, 5),
        latent_mean=float(z.mean()),
        latent_std=float(z.std()),
    )
    # reconstruction PSNR on the held-out photos (measured only; never trained on)
    codec = LatentCodec(vae)
    with torch.no_grad():
        recon = {}
        for p in sorted((v1_root(work) / "photos" / "heldout").glob("*.png")):
            x = read_image(p)[0][None]
            recon[p.stem] = round(psnr(codec.crop(codec.decode(codec.encode_padded(x)), *x.shape[-2:]), x), 2)
    report["heldout_reconstruction_psnr"] = recon
    log(f"autoencoder: {report}")
    return report
