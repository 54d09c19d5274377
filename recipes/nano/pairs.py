"""LQ/HQ pairs made the way the test pairs are: a whole HQ region degraded at once, then aligned interior crops.

One pair (`make_pair`): from a photo, a square of side REGION / f (f ~ U(REGION / short side, 1): the scene at a
random scale between the stored photo's and a whole-photo view) is resized to REGION x REGION (antialiased
bicubic), flipped at random, degraded once with the Real-ESRGAN pipeline (sanasr_cli.data.degradation, default
settings: the same code as `sanasr degrade` and `sanasr train --hq`), and the centre CROP x CROP of the HQ region is
kept with the LQ pixels that cover it. The LQ border (MARGIN LQ px on each side) is degraded with the crop but not
kept, so blur kernels and resizes see real neighbours instead of a crop's edge, as they do in a whole test photo.

The same function makes the training pool (train photos, many draws) and the evaluation pairs (held-out photos,
EVAL_SEEDS draws each): train and test differ only in the photos.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

REGION = 384  # HQ side of the degraded region
CROP = 256  # HQ side of the kept pair (LQ: CROP / 4)
SCALE = 4
EVAL_SEEDS = 8


def make_pair(photo: np.ndarray, seed: int, degrader=None) -> tuple[np.ndarray, np.ndarray]:
    """(lq, hq): uint8 (CROP/4, CROP/4, 3) and (CROP, CROP, 3) from a uint8 (H, W, 3) photo, all draws from `seed`."""
    from PIL import Image

    from sanasr_cli.data.degradation import RealESRGANDegrader

    degrader = degrader or RealESRGANDegrader()
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    short = min(h, w)
    region_side = min(REGION, short // 8 * 8)  # smaller only for nano v1's small held-out photos (data.py)
    f = rng.uniform(region_side / short, 1.0) if short > region_side else 1.0
    side = min(short, int(round(region_side / f)))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    region = Image.fromarray(photo[top : top + side, left : left + side]).resize(
        (region_side, region_side), Image.Resampling.BICUBIC
    )
    hq = torch.from_numpy(np.asarray(region).copy()).permute(2, 0, 1)[None].float() / 255
    if rng.random() < 0.5:
        hq = hq.flip(-1)
    lq = degrader(hq, torch.Generator().manual_seed(int(rng.integers(0, 2**62))))
    m = (region_side - CROP) // 2 // SCALE * SCALE
    hq_crop = hq[0, :, m : m + CROP, m : m + CROP]
    lq_crop = lq[0, :, m // SCALE : (m + CROP) // SCALE, m // SCALE : (m + CROP) // SCALE]
    to_u8 = lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # noqa: E731
    return to_u8(lq_crop), to_u8(hq_crop)


def write_pairs(
    photos: list[tuple[str, np.ndarray]], out: Path, draws: int, seed: int, progress=None
) -> list[tuple[Path, Path]]:
    """`draws` pairs of each (name, photo), as out/lq/NAME-sK.png and out/hq/NAME-sK.png (same stems, as
    `sanasr train --pairs` and `sanasr eval` pair them). Each pair's seed is a function of (seed, photo index, K),
    so a rerun writes the same pairs and reuses the files already there (each written under a temporary name and
    renamed: an interrupted run leaves no half-written pair)."""
    from PIL import Image

    from sanasr_cli.data.degradation import RealESRGANDegrader

    degrader = RealESRGANDegrader()
    (out / "lq").mkdir(parents=True, exist_ok=True)
    (out / "hq").mkdir(parents=True, exist_ok=True)
    done = []
    for i, (name, photo) in enumerate(photos):
        for k in range(draws):
            lq_file, hq_file = out / "lq" / f"{name}-s{k}.png", out / "hq" / f"{name}-s{k}.png"
            if not (lq_file.exists() and hq_file.exists()):
                lq, hq = make_pair(photo, seed=(seed * 1_000_003 + i) * 10_007 + k, degrader=degrader)
                for array, file in ((hq, hq_file), (lq, lq_file)):
                    tmp = file.with_name(file.stem + ".tmp.png")
                    Image.fromarray(array).save(tmp)
                    os.replace(tmp, file)
            done.append((lq_file, hq_file))
        if progress:
            progress(i + 1, len(photos))
    return done


def read_pairs(root: Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(stems, lq, hq) of a pair folder: float (N, 3, h, w) in [0, 1], sorted by stem."""
    from PIL import Image

    stems = sorted(p.stem for p in (root / "hq").glob("*.png") if not p.stem.endswith(".tmp"))

    def load(sub: str) -> torch.Tensor:
        arrays = [np.asarray(Image.open(root / sub / f"{s}.png").convert("RGB")) for s in stems]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255

    return stems, load("lq"), load("hq")
