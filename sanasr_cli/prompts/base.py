"""What the taggers share and the tagger registry (`taggers.py`) builds on: the input every image tagger sees,
and the default CLIP model. A module of its own so that `clip_tagger.py` and `dape.py` import it without importing
the registry that imports them."""

from __future__ import annotations

import torch

from sanasr_cli.data.resample import upsample_bicubic

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"

# Tagger input: LQ upsampled by the paper's SR factor, whatever scale a command uses, so that tags of one file
# are the same in train, prune calibration, upscale and eval (and one cache entry serves them all).
TAGGER_UPSAMPLE = 4.0


def tagger_input(image: torch.Tensor, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """(3, h, w) LQ in [0, 1] -> (1, 3, H, W) float32 in [0, 1]: bicubic x TAGGER_UPSAMPLE (as the paper's
    pipeline feeds DAPE), then, when `size` is given, an antialiased bicubic resize to the tagger's input
    size."""
    import torch.nn.functional as F

    x = upsample_bicubic(image.detach().float().cpu()[None], TAGGER_UPSAMPLE)
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    return x
