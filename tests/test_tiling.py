"""Tiling: plans, smooth blending, seams measured on a real (tiny) output, and the out-of-memory fallback."""

import pytest
import torch

from sanasr_cli.models.tiling import (
    MIN_LATENT_TILE,
    TilePlan,
    overlap_for,
    parse_tile,
    plan_tiles,
    tile_starts,
    tile_weight_1d,
    tiled_apply,
)
from sanasr_cli.pipeline.upscale import upscale_tensor
from tests.helpers import make_photo_like

TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)


def _lq(h, w, seed=7):
    return torch.from_numpy(make_photo_like(h, w, seed)).permute(2, 0, 1).float() / 255


def test_tile_starts_cover_everything_with_overlap():
    for total in (1, 5, 8, 9, 20, 33):
        for tile in (4, 8, 12):
            ov = overlap_for(tile)
            starts = tile_starts(total, tile, ov)
            covered = set()
            for s in starts:
                covered |= set(range(s, min(s + tile, total)))
            assert covered == set(range(total))
            assert starts[-1] + min(tile, total) == total
            assert all(b - a <= tile - ov for a, b in zip(starts, starts[1:], strict=False))


def test_weights_are_smooth_positive_and_blend_identity_exactly():
    w = tile_weight_1d(12, 4, 30, 3)
    assert (w > 0).all() and w[0] < 0.01 and w[-1] < 0.01 and w[5] == 1
    x = torch.rand(2, 3, 37, 29)
    calls = []

    def identity(t):
        calls.append(t.shape[0])
        return t

    y = tiled_apply(identity, x, tile=8, batch_size=4)
    assert torch.allclose(y, x, atol=1e-6)
    assert max(calls) <= 4 and len(calls) > 1  # tiles batched, batch_size respected (2 images x 2 tiles)
    # an x2 "decoder": nearest upsampling, blended in output space
    up = tiled_apply(lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2), x, tile=8, out_scale=2)
    assert torch.allclose(up, x.repeat_interleave(2, -1).repeat_interleave(2, -2), atol=1e-6)


def test_plans():
    class M:  # plan_tiles reads only the factor from the codec for these cases
        class codec:
            factor = 8

    p = plan_tiles(M, 160, 160, "none", torch.device("cpu"))
    assert p.dit_tile is None and p.vae_tile is None and p.latent_size == (20, 20)
    p = plan_tiles(M, 160, 160, 64, torch.device("cpu"))
    assert p.dit_tile == p.vae_tile == 8 and p.dit_tiles == 9
    assert plan_tiles(M, 160, 160, 4096, torch.device("cpu")).dit_tile is None  # larger than the image: whole
    assert plan_tiles(M, 160, 160, "auto", torch.device("cpu")).dit_tile is None  # CPU: whole unless huge
    huge = plan_tiles(M, 8192, 4096, "auto", torch.device("cpu"))
    assert huge.dit_tile == 256 and "CPU" in huge.reason
    assert parse_tile("AUTO") == "auto" and parse_tile("512") == 512
    for bad in ("0", "-3", "big"):
        with pytest.raises(ValueError, match="--tile"):
            parse_tile(bad)
    half = TilePlan(factor=8, latent_size=(20, 30)).halved()
    assert half.dit_tile == half.vae_tile == 15 and half.oom_retries == 1
    smallest = TilePlan(factor=8, latent_size=(20, 30), dit_tile=MIN_LATENT_TILE, vae_tile=MIN_LATENT_TILE)
    assert smallest.halved() is None


def test_auto_plan_follows_free_memory(tiny_model):
    """The CUDA branch of --tile auto, fed a free-memory figure: more memory never means smaller tiles, the
    VAE (per-pixel cost) is tiled before the transformer, and plenty of memory means the whole image."""
    plans = [plan_tiles(tiny_model, 640, 640, "auto", free_bytes=b) for b in (2**40, 2**26, 10**7, 10**6, 10**4)]
    assert plans[0].dit_tile is None and plans[0].vae_tile is None and "MiB free" in plans[0].reason
    vae = [p.vae_tile or 80 for p in plans]
    assert vae == sorted(vae, reverse=True) and vae[-1] == MIN_LATENT_TILE
    third = plans[2]
    assert third.vae_tile is not None and (third.dit_tile is None or third.dit_tile > third.vae_tile)


def _jumps(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute jump between neighbouring columns (index c: between c and c+1) and rows."""
    return (img[:, :, 1:] - img[:, :, :-1]).abs().mean((0, 1)), (img[:, 1:] - img[:, :-1]).abs().mean((0, 2))


def _seam_ratio(img: torch.Tensor, borders: list[int], factor: int, size: int) -> float:
    """Per axis: mean jump across the tile borders / median jump across the other interior latent-grid
    lines (the random tiny VAE draws its own grid pattern, so only grid lines are comparable); the worse
    axis is returned.
    Grid lines next to the image edge are left out: the decoder's edge effects are strongest there."""
    grid = [c * factor for c in range(2, size // factor - 1)]
    others = [g - 1 for g in grid if g not in borders]
    ratios = []
    for jumps in _jumps(img):
        ratios.append(float(jumps[[b - 1 for b in borders]].mean() / jumps[others].median()))
    return max(ratios)


@pytest.mark.numerics
def test_tiled_output_has_no_seams(tiny_model):
    """40x40 -> 160x160 (20x20 latents), 96 px tiles (12 latents, overlap 3): tiles at 0 and 8 on each axis,
    borders at pixels 64 and 96. Colour fix off, so nothing smooths the seams afterwards."""
    lq = _lq(40, 40)
    tiled, plan = upscale_tensor(tiny_model, lq, "a photo", tile=96, color_fix="none", return_plan=True)
    assert plan.dit_tile == plan.vae_tile == 12 and plan.dit_tiles == 4
    f = tiny_model.codec.factor
    starts = tile_starts(20, 12, overlap_for(12))
    borders = sorted({s * f for s in starts if s > 0} | {(s + 12) * f for s in starts if s + 12 < 20})
    assert borders == [64, 96]
    ratio = _seam_ratio(tiled, borders, f, 160)
    print(f"seam ratio (tile borders / elsewhere): {ratio:.3f}")
    assert ratio < 1.3, ratio
    # the measure does see a seam: two halves restored separately and put side by side
    left = upscale_tensor(tiny_model, lq[:, :, :20], "a photo", tile="none", color_fix="none")
    right = upscale_tensor(tiny_model, lq[:, :, 20:], "a photo", tile="none", color_fix="none")
    naive = torch.cat([left, right], -1)
    cols, _ = _jumps(naive)
    assert cols[79] > 3 * cols[torch.arange(8, 150, 8) - 1].median()
    # and tiling stays close to the whole-image result
    whole = upscale_tensor(tiny_model, lq, "a photo", tile="none", color_fix="none")
    assert (tiled - whole).abs().mean() < 0.05


@pytest.mark.numerics
def test_out_of_memory_halves_the_tile_and_retries(tiny_model):
    """A forward pre-hook on the real transformer raises torch.OutOfMemoryError above 8 latents per side
    (what a too-small GPU does); the pipeline must retry with halved tiles and give the tiled result."""
    calls = []

    def limit(module, args, kwargs):
        side = max(kwargs["hidden_states"].shape[-2:])
        calls.append(side)
        if side > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")

    lq = _lq(24, 24)  # 96x96 at x4: 12x12 latents
    handle = tiny_model.transformer.register_forward_pre_hook(limit, with_kwargs=True)
    try:
        sr, plan = upscale_tensor(tiny_model, lq, "a photo", tile="none", color_fix="none", return_plan=True)
    finally:
        handle.remove()
    assert calls[0] == 12 and plan.oom_retries == 1 and plan.dit_tile == 6 and "out of memory" in plan.reason
    expected = upscale_tensor(tiny_model, lq, "a photo", tile=48, color_fix="none")
    assert sr.shape == (3, 96, 96) and torch.allclose(sr, expected, atol=1e-5)

    def always(module, args, kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = tiny_model.transformer.register_forward_pre_hook(always, with_kwargs=True)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            upscale_tensor(tiny_model, _lq(8, 8), "a photo", tile="none")
    finally:
        handle.remove()
