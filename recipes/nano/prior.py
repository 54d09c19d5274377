"""Stage prior (nano's base): the nano LinearDiT (diffusers SanaTransformer2DModel) pretrained by flow matching on
nano latents of HQ crops of nano v1's train photos: u ~ logit-normal(0, 1), sigma = s u / (1 + (s - 1) u) with
s = 3, the transformer fed 1000 * sigma (SANA's convention), target eps - z0; conditioned through the real prompt
path (the quality template alone, encoded with SANA's complex human instruction). Needs the autoencoder and text
stages' WORK/base (read as `sanasr` reads a base folder); writes WORK/base/transformer, and
WORK/prior_samples.png (20 Euler steps from noise with diffusers' scheduler: a sanity check).

    python -m recipes.nano --work WORK --stage prior [--prior-steps 400]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recipes.nano.loop import train_loop
from recipes.nano.v1_photos import photo_tensors
from sanasr_cli.models.presets import PRESETS

PRESET = PRESETS["nano"]


def stage_prior(
    work: Path, seed: int, steps: int, batch: int = 32, crop: int = 64, pool: int = 1536, log=print
) -> dict:
    from sanasr_cli.models.sanasr import build_random_transformer, load_pretrained_base
    from sanasr_cli.models.schedule import flow_sigma
    from sanasr_cli.models.text_encoder import PromptEncoder
    from sanasr_cli.models.vae import LatentCodec
    from sanasr_cli.prompts.template import DEFAULT_TEMPLATE, build_prompt
    from sanasr_cli.training.distill import random_crops

    start = time.time()
    _, vae, tokenizer, text_encoder, shift = load_pretrained_base(
        PRESET, str(work / "base"), torch.float32, need_transformer=False
    )
    codec = LatentCodec(vae)
    train = photo_tensors(work, "train")
    pool_file = work / "ckpt" / "prior_latents.pt"
    if pool_file.exists():
        latents = torch.load(pool_file, weights_only=True)
    else:  # a fixed pool of encoded crops (flips included): the encoder runs once, not every step
        g = torch.Generator().manual_seed(seed + 3)
        with torch.no_grad():
            latents = torch.cat([codec.encode(random_crops(train, crop, 32, g)) for _ in range(pool // 32)])
        pool_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(latents, pool_file)
    prompts = PromptEncoder(tokenizer, text_encoder, max_length=PRESET.max_text_length)
    embeds, mask = prompts.encode([build_prompt([], DEFAULT_TEMPLATE)])
    transformer = build_random_transformer(PRESET, seed + 4)

    def step_fn(g):
        idx = torch.randint(len(latents), (batch,), generator=g)
        z0 = latents[idx]
        u = torch.sigmoid(torch.randn(batch, generator=g))  # logit-normal(0, 1)
        sigma = flow_sigma(u * 1000, shift)
        eps = torch.randn(z0.shape, generator=g)
        zt = (1 - sigma.view(-1, 1, 1, 1)) * z0 + sigma.view(-1, 1, 1, 1) * eps
        v = transformer(
            hidden_states=zt,
            encoder_hidden_states=embeds.expand(batch, -1, -1),
            encoder_attention_mask=mask.expand(batch, -1),
            timestep=1000 * sigma,
            return_dict=False,
        )[0]
        return F.mse_loss(v, eps - z0)

    history = train_loop("prior", work, transformer, steps, 3e-4, step_fn, seed, log=log)
    transformer.save_pretrained(str(work / "base" / "transformer"), safe_serialization=True)
    z = sample_latents(transformer, embeds, mask, latents.shape[1:], shift, seed + 5)
    with torch.no_grad():
        sample = codec.decode(z)
    from PIL import Image

    grid = (sample.permute(0, 2, 3, 1).reshape(-1, sample.shape[-1], 3).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(grid).save(work / "prior_samples.png")
    report = dict(
        steps=steps,
        batch=batch,
        crop=crop,
        latent_pool=len(latents),
        lr=3e-4,
        t_sampling="logit-normal(0, 1)",
        shift=shift,
        seconds=round(time.time() - start, 1),
        final_loss=sum(history[-50:]) / 50,
        first_loss=sum(history[:50]) / 50,
        data_latents=dict(mean=float(latents.mean()), std=float(latents.std())),
        sampled_latents=dict(mean=float(z.mean()), std=float(z.std())),
        params=sum(p.numel() for p in transformer.parameters()),
    )
    log(f"prior: {report}")
    return report


def sample_latents(transformer, embeds, mask, shape, shift: float, seed: int, n: int = 4, steps: int = 20):
    """n latents sampled from noise in `steps` Euler steps with diffusers' own flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *shape, generator=g)
    with torch.no_grad():
        for t in sched.timesteps:
            v = transformer(
                hidden_states=z,
                encoder_hidden_states=embeds.expand(n, -1, -1),
                encoder_attention_mask=mask.expand(n, -1),
                timestep=t.expand(n),
                return_dict=False,
            )[0]
            z = sched.step(v, t, z).prev_sample
    return z
