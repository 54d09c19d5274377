"""nano v2's decoder: v1's DC-AE decoder trained on, with the encoder frozen, on v2's training photos.

Why: nano's ladder puts D(E(bicubic)) at -0.25 dB median / -0.59 dB mean under bicubic (recipes/nano/results/
ladder_base_rungs.json): the restorer must first win back what the autoencoder loses, and v1's autoencoder had
seen 12 photos for 3000 steps of 32 px crops (850 s). Only the decoder trains, so the latent space (what the prior
and the SR adapter were trained on) is unchanged and every adapter of nano keeps working with the new decoder.

Objective: reconstruction, D(E(x)) = x, on two kinds of x, half a batch each: random crops of the training photos
(the HQ side: what a good restorer's latents decode to) and the bicubic upsampling of the training pool's LQ crops
(the restorer's input side: what a near-identity update decodes to). Same loss as v1's autoencoder (MSE + 0.5 L1 on
[-1, 1] pixels), Adam with warmup and cosine decay, a resumable checkpoint (decoder, optimizer, RNG, step) every
`save_every` steps in WORK/ckpt/decoder.pt; at the end WORK/base_v2/ is nano's shipped base with vae/ holding the
new decoder (config and scaling factor unchanged).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CROP = 64  # 128 px x 8 measured 1.1 s/step on one shared core; 64 px x 16 is half the pixels per step


def load_photos(folder: Path) -> list[torch.Tensor]:
    """(3, H, W) uint8 tensors of every PNG in `folder`."""
    import numpy as np
    from PIL import Image

    return [
        torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1)
        for p in sorted(folder.glob("*.png"))
    ]


def batch_of(photos, pool_lq, n: int, g: torch.Generator) -> torch.Tensor:
    """n/2 random photo crops and n/2 bicubic-upsampled pool LQ crops, (n, 3, CROP, CROP) in [0, 1]."""
    from sanasr_cli.data.resample import upsample_bicubic
    from sanasr_cli.training.distill import random_crops

    hq = random_crops(photos, CROP, n // 2, g)
    idx = torch.randint(len(pool_lq), (n - n // 2,), generator=g)
    s, h = CROP // 4, pool_lq.shape[-1]
    crops = []
    for i in idx.tolist():
        t, left = (int(v) for v in torch.randint(0, h - s + 1, (2,), generator=g))
        crops.append(pool_lq[i, :, t : t + s, left : left + s])
    bic = upsample_bicubic(torch.stack(crops).float() / 255, 4).clamp(0, 1)
    return torch.cat([hq, bic])


def train_decoder(
    work: Path,
    base: Path,
    steps: int,
    batch: int = 16,
    lr: float = 3e-4,
    warmup: int = 50,
    seed: int = 0,
    save_every: int = 250,
    log=print,
) -> Path:
    """Train (or resume) the decoder for `steps`; returns WORK/base_v2 (written once the last step is done)."""
    from diffusers import AutoencoderDC

    from recipes.nano.reference import load_pool

    out = work / "base_v2"
    if (out / "vae" / "config.json").exists():
        log(f"decoder: {out} exists, skipped")
        return out
    vae = AutoencoderDC.from_pretrained(str(base / "vae"))
    vae.encoder.requires_grad_(False).eval()
    photos = load_photos(work / "photos" / "train")
    pool_lq = load_pool(work / "train_pairs")[0]
    opt = torch.optim.Adam(vae.decoder.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    ckpt, start, history, seconds = work / "ckpt" / "decoder.pt", 0, [], 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        vae.decoder.load_state_dict(state["decoder"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["rng"])
        start, history, seconds = int(state["step"]), state["history"], float(state["seconds"])
        log(f"decoder: resumed at step {start}")
    vae.decoder.train()
    t0 = time.time()
    for step in range(start, steps):
        scale = (
            (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        )
        for group in opt.param_groups:
            group["lr"] = lr * scale
        x = batch_of(photos, pool_lq, batch, g) * 2 - 1
        with torch.no_grad():
            z = vae.encode(x).latent
        y = vae.decode(z).sample
        loss = F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(round(loss.item(), 6))
        if (step + 1) % 50 == 0:
            recent = history[-50:]
            log(f"decoder: step {step + 1}/{steps} loss {sum(recent) / len(recent):.5f} "
                f"({(time.time() - t0) / (step + 1 - start):.3f} s/step)")  # fmt: skip
        if (step + 1) % save_every == 0 or step + 1 == steps:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            state = dict(decoder=vae.decoder.state_dict(), optimizer=opt.state_dict(), rng=g.get_state(),
                         step=step + 1, history=history, seconds=seconds + time.time() - t0)  # fmt: skip
            torch.save(state, str(ckpt) + ".tmp")
            os.replace(str(ckpt) + ".tmp", ckpt)
    tmp = work / "base_v2.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("vae"))
    vae.eval().save_pretrained(str(tmp / "vae"), safe_serialization=True)
    report = dict(steps=steps, batch=batch, crop=CROP, lr=lr, loss="mse + 0.5 l1 on [-1, 1] pixels",
                  inputs="half photo crops, half bicubic(pool LQ)", final_loss=sum(history[-50:]) / 50,
                  seconds=round(float(torch.load(ckpt, weights_only=True)["seconds"]), 1))  # fmt: skip
    (tmp / "decoder_report.json").write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)
    log(f"decoder: {report} -> {out}")
    return out
