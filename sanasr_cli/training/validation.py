"""Validation grids: a few fixed training images, LQ | SR | HQ per row, written as PNG every N steps.

The fixed images are made once per run (the first items of the dataset, degraded with their own seeded
generator), so every grid of a run, resumed or not, shows the same inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VALIDATION_DIR = "validation"


# Colour of the bar above the column whose image was tagged for the prompt (the grid says which one).
TAGGED_MARK = (1.0, 0.55, 0.0)
_COLUMNS = {"lq": 0, "hq": 2}  # grid columns: LQ (bicubic) | SR | HQ


@torch.no_grad()
def make_grid(
    lq_upsampled: torch.Tensor, sr: torch.Tensor, hq: torch.Tensor, gap: int = 2, tagged: str | None = None
) -> torch.Tensor:
    """Rows of [LQ (bicubic) | SR | HQ]: three (B, 3, H, W) in [0, 1] -> (3, B*H + gaps, 3*W + gaps).

    tagged ("lq" / "hq"): a bar of 2*gap rows is added on top, orange (TAGGED_MARK) over the column whose image
    the prompts were made from, white elsewhere.
    """
    b, _, h, w = hq.shape
    top = 2 * gap if tagged else 0
    grid = torch.ones(3, top + b * h + (b - 1) * gap, 3 * w + 2 * gap)
    if tagged:
        x = _COLUMNS[tagged] * (w + gap)
        grid[:, :top, x : x + w] = torch.tensor(TAGGED_MARK).view(3, 1, 1)
    for i in range(b):
        for j, img in enumerate((lq_upsampled, sr, hq)):
            y, x = top + i * (h + gap), j * (w + gap)
            grid[:, y : y + h, x : x + w] = img[i].detach().float().cpu().clamp(0, 1)
    return grid


@torch.no_grad()
def save_validation_grid(
    model, rule, tagger, validation: dict, run_dir: Path, step: int, source: str = "lq"
) -> torch.Tensor:
    """Restore the fixed validation inputs with the current weights; write RUN/validation/step-<step>.png
    and RUN/validation/prompts.json ({"tagged": source, "prompts": [one per row]}).

    Prompts are made as in training (App. A.1: one prompt source for training, validation and calibration):
    `source` "hq" tags the HQ image, "lq" the LQ one; the grid marks that column with an orange bar.
    validation: {"lq": (B, 3, H/4, W/4), "lq_up": (B, 3, H, W) bicubic, "hq": (B, 3, H, W), "files"}, in [0,
    1]. Returns the grid (3, H', W').
    """
    from sanasr_cli.data.io import write_image
    from sanasr_cli.safe_files import atomic_write
    from sanasr_cli.training.data import batch_prompts

    lq, lq_up, hq = validation["lq"], validation["lq_up"], validation["hq"]
    prompts = batch_prompts(rule, tagger, source, lq, hq, validation["files"])
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
    grid = make_grid(lq_up, sr, hq, tagged=source)
    record = {
        "tagged": source,
        "note": f"prompts made from the {source.upper()} image of each row (the grid's orange bar marks that "
        "column); inference (upscale, eval) always tags the LQ input",
        "prompts": prompts,
    }
    atomic_write(Path(run_dir) / VALIDATION_DIR / "prompts.json", json.dumps(record, indent=2) + "\n")
    write_image(Path(run_dir) / VALIDATION_DIR / f"step-{step:07d}.png", grid)
    return grid
