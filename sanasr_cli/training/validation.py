"""Validation grids: a few fixed training images, LQ | SR | HQ per row, written as PNG every N steps.

The fixed images are made once per run (the first items of the dataset, degraded with their own seeded
generator), so every grid of a run, resumed or not, shows the same inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VALIDATION_DIR = "validation"


@torch.no_grad()
def make_grid(lq_upsampled: torch.Tensor, sr: torch.Tensor, hq: torch.Tensor, gap: int = 2) -> torch.Tensor:
    """Rows of [LQ (bicubic) | SR | HQ]: three (B, 3, H, W) in [0, 1] -> (3, B*H + gaps, 3*W + gaps)."""
    b, _, h, w = hq.shape
    grid = torch.ones(3, b * h + (b - 1) * gap, 3 * w + 2 * gap)
    for i in range(b):
        for j, img in enumerate((lq_upsampled, sr, hq)):
            y, x = i * (h + gap), j * (w + gap)
            grid[:, y : y + h, x : x + w] = img[i].detach().float().cpu().clamp(0, 1)
    return grid


@torch.no_grad()
def save_validation_grid(model, rule, tagger, validation: dict, run_dir: Path, step: int) -> torch.Tensor:
    """Restore the fixed validation inputs with the current weights; write RUN/validation/step-<step>.png
    (and the rows' prompts to RUN/validation/prompts.json).

    validation: {"lq": (B, 3, H/4, W/4), "lq_up": (B, 3, H, W) bicubic, "hq": (B, 3, H, W), "paths"}, in [0,
    1]. Returns the grid (3, H', W').
    """
    from sanasr_cli.data.io import write_image
    from sanasr_cli.prompts.rule import prompt_for_image
    from sanasr_cli.training.checkpoint import write_text_atomic

    lq, lq_up, hq = validation["lq"], validation["lq_up"], validation["hq"]
    paths = validation["paths"] if rule.tagger == "file" else [None] * lq.shape[0]  # see encode_prompts
    prompts = [prompt_for_image(rule, lq[i].cpu(), paths[i], tagger) for i in range(lq.shape[0])]
    transformer = model.transformer
    was_training = transformer.training
    transformer.eval()
    try:
        embeds, mask = model.prompts.encode(prompts)
        device = model.device
        z = model.codec.encode(lq_up.to(device))
        z_hat = model.restorer(z, embeds.to(device), mask.to(device))
        sr = model.codec.decode(z_hat)
    finally:
        transformer.train(was_training)
    grid = make_grid(lq_up, sr, hq)
    write_text_atomic(Path(run_dir) / VALIDATION_DIR / "prompts.json", json.dumps(prompts, indent=2) + "\n")
    write_image(Path(run_dir) / VALIDATION_DIR / f"step-{step:07d}.png", grid)
    return grid
