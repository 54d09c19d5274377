"""Colour fix: wavelet takes the low frequencies from the reference, keeps the detail; adain matches stats."""

import pytest
import torch

from sanasr_cli.pipeline.color import adain_color_fix, color_fix, wavelet_color_fix, wavelet_decompose


def _scene(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    smooth = torch.stack([0.3 + 0.4 * xx, 0.5 - 0.2 * yy, 0.4 + 0.1 * xx * yy])
    detail = 0.05 * torch.randn(3, size, size, generator=g)
    return smooth, detail


def test_wavelet_removes_a_colour_shift_and_keeps_detail():
    smooth, detail = _scene()
    reference = smooth  # the bicubic input: right colours, no detail
    restored = (smooth + detail + torch.tensor([0.15, -0.1, 0.05]).view(3, 1, 1)).clamp(0, 1)  # detail + shift
    fixed = wavelet_color_fix(restored, reference)
    assert fixed.shape == restored.shape and fixed.dtype == torch.float32
    shift_before = (restored.mean((1, 2)) - reference.mean((1, 2))).abs().max()
    shift_after = (fixed.mean((1, 2)) - reference.mean((1, 2))).abs().max()
    assert shift_before > 0.09 and shift_after < 0.01
    high_fixed, _ = wavelet_decompose(fixed[None])
    high_restored, _ = wavelet_decompose(restored[None])
    inner = (..., slice(8, -8), slice(8, -8))
    assert torch.allclose(high_fixed[inner], high_restored[inner], atol=0.02)  # detail kept


def test_wavelet_works_on_tiny_images():
    for h, w in [(1, 1), (4, 4), (3, 50)]:
        x, ref = torch.rand(1, 3, h, w), torch.rand(1, 3, h, w)
        assert wavelet_color_fix(x, ref).shape == (1, 3, h, w)


def test_adain_matches_channel_statistics():
    restored, reference = torch.rand(2, 3, 16, 16) * 0.5, 0.3 + 0.2 * torch.rand(2, 3, 16, 16)
    fixed = adain_color_fix(restored, reference)
    assert torch.allclose(fixed.mean((-2, -1)), reference.mean((-2, -1)), atol=1e-4)
    assert torch.allclose(fixed.std((-2, -1)), reference.std((-2, -1)), atol=1e-3)


def test_dispatch():
    x = torch.rand(3, 8, 8)
    assert torch.equal(color_fix(x, x * 0, "none"), x)
    with pytest.raises(ValueError, match="wavelet"):
        color_fix(x, x, "magic")
