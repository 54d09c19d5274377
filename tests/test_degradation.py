"""The Real-ESRGAN degradation pipeline: contract, determinism, and each operation measured against its parameter."""

import math

import numpy as np
import pytest
import torch

from sanasr_cli.data.degradation import (
    DegradationConfig,
    RealESRGANDegrader,
    add_gaussian_noise,
    add_poisson_noise,
    filter2d,
    gaussian_kernel,
    generalized_gaussian_kernel,
    jpeg_compress,
    jpeg_compress_pil,
    plateau_kernel,
    resize,
    sinc_kernel,
)
from tests.conftest import make_photo_like


def photo_batch(n=2, size=64, seed=0):
    return torch.stack([torch.from_numpy(make_photo_like(size, size, seed + i)).permute(2, 0, 1).float() / 255
                        for i in range(n)])


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --- the contract ----------------------------------------------------------------------------------------


def test_shapes_range_and_8bit_quantisation():
    hq = photo_batch(3, 64)
    lq = RealESRGANDegrader(scale=4)(hq, gen(0))
    assert lq.shape == (3, 3, 16, 16) and lq.dtype == torch.float32
    assert lq.min() >= 0 and lq.max() <= 1
    assert torch.equal(lq * 255, (lq * 255).round())
    lq2 = RealESRGANDegrader(scale=2)(hq[:, :, :, :48], gen(0))
    assert lq2.shape == (3, 3, 32, 24)


def test_bit_exact_for_a_seed_and_different_across_seeds():
    hq = photo_batch(4, 64)
    deg = RealESRGANDegrader()
    a, b = deg(hq, gen(7)), deg(hq, gen(7))
    assert torch.equal(a, b)
    c = deg(hq, gen(8))
    assert not torch.equal(a, c)
    # samples in one batch get their own draws
    same = photo_batch(1, 64).expand(4, -1, -1, -1).contiguous()
    out = deg(same, gen(1))
    assert len({out[i].numpy().tobytes() for i in range(4)}) == 4


def test_bad_inputs_are_refused():
    deg = RealESRGANDegrader(scale=4)
    with pytest.raises(ValueError, match="multiple of the scale"):
        deg(torch.rand(1, 3, 30, 32), gen(0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        deg(torch.rand(3, 32, 32), gen(0))
    with pytest.raises(ValueError, match="kernel_prob"):
        DegradationConfig(kernel_prob=(1.0,))
    with pytest.raises(ValueError, match="unknown degradation parameter"):
        DegradationConfig.from_dict({"blur_sigmaa": [0.1, 1]})


def test_config_defaults_are_the_x4plus_values():
    c = DegradationConfig()
    assert c.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and c.sinc_prob == 0.1 and c.sinc_prob2 == 0.1
    assert c.blur_sigma == (0.2, 3.0) and c.blur_sigma2 == (0.2, 1.5) and c.betag_range == (0.5, 4.0)
    assert c.betap_range == (1.0, 2.0) and c.blur_kernel_size == tuple(range(7, 22, 2))
    assert c.resize_prob == (0.2, 0.7, 0.1) and c.resize_range == (0.15, 1.5)
    assert c.resize_prob2 == (0.3, 0.4, 0.3) and c.resize_range2 == (0.3, 1.2)
    assert c.noise_range == (1.0, 30.0) and c.noise_range2 == (1.0, 25.0)
    assert c.poisson_scale_range == (0.05, 3.0) and c.poisson_scale_range2 == (0.05, 2.5)
    assert c.gaussian_noise_prob == c.gaussian_noise_prob2 == 0.5 and c.gray_noise_prob == c.gray_noise_prob2 == 0.4
    assert c.jpeg_range == c.jpeg_range2 == (30.0, 95.0) and c.second_blur_prob == 0.8 and c.final_sinc_prob == 0.8
    assert DegradationConfig.from_dict(c.to_dict()) == c
