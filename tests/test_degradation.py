"""Real-ESRGAN degradation pipeline: contract, determinism, each operation measured against its parameter."""

import math

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
from tests.helpers import make_photo_like


def photo_batch(n=2, size=64, seed=0):
    return torch.stack(
        [torch.from_numpy(make_photo_like(size, size, seed + i)).permute(2, 0, 1).float() / 255 for i in range(n)]
    )


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


# --- kernels ------------------------------------------------------------------------------------------------


def _moments(k):
    ax = torch.arange(k.shape[-1], dtype=torch.float64) - (k.shape[-1] - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    mx, my = (k * xx).sum(), (k * yy).sum()
    cov = torch.tensor([[(k * xx * xx).sum(), (k * xx * yy).sum()], [(k * xx * yy).sum(), (k * yy * yy).sum()]])
    return float(mx), float(my), cov


def test_gaussian_kernels_have_the_requested_covariance():
    k = gaussian_kernel(21, 2.0)
    mx, my, cov = _moments(k)
    assert abs(float(k.sum()) - 1) < 1e-12 and abs(mx) < 1e-12 and abs(my) < 1e-12
    assert torch.allclose(cov, torch.diag(torch.tensor([4.0, 4.0], dtype=torch.float64)), rtol=0.01)
    sx, sy, theta = 2.5, 1.0, 0.6
    _, _, cov = _moments(gaussian_kernel(21, sx, sy, theta))
    r = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    want = r @ torch.diag(torch.tensor([sx**2, sy**2], dtype=torch.float64)) @ r.T
    assert torch.allclose(cov, want, atol=0.03 * sx**2)
    evals = torch.linalg.eigvalsh(cov)
    assert abs(math.sqrt(evals[1]) - sx) < 0.05 and abs(math.sqrt(evals[0]) - sy) < 0.02


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 4.0])
def test_generalized_and_plateau_shapes(beta):
    c, s = 10, 2.0  # centre index, sigma (an integer, so x = s and 2s are grid points)
    g = generalized_gaussian_kernel(21, s, beta=beta)
    # exp(-0.5 q^beta), q = (x / s)^2: ratio exp(-0.5) at x = s for every beta, exp(-0.5 * 4^beta) at x = 2s
    assert math.isclose(float(g[c, c + 2] / g[c, c]), math.exp(-0.5), rel_tol=1e-9)
    assert math.isclose(float(g[c, c + 4] / g[c, c]), math.exp(-0.5 * 4**beta), rel_tol=1e-9)
    p = plateau_kernel(21, s, beta=beta)
    # 1 / (1 + q^beta): half height on the sigma circle, 1 / (1 + 4^beta) at x = 2s
    assert math.isclose(float(p[c, c + 2] / p[c, c]), 0.5, rel_tol=1e-9)
    assert math.isclose(float(p[c, c + 4] / p[c, c]), 1 / (1 + 4**beta), rel_tol=1e-9)
    for k in (g, p):
        assert abs(float(k.sum()) - 1) < 1e-12 and torch.allclose(k, k.flip(0)) and torch.allclose(k, k.T)
    if beta == 1.0:
        assert torch.allclose(g, gaussian_kernel(21, s))


def test_sinc_kernel_is_a_lowpass_at_its_cutoff():
    cutoff = math.pi / 2
    k = sinc_kernel(21, cutoff)
    assert abs(float(k.sum()) - 1) < 1e-12
    x = torch.arange(21, dtype=torch.float64) - 10

    def response(w):  # DTFT along one axis (the kernel is symmetric, so it is real)
        return float((k * torch.cos(w * x)[None, :]).sum())

    assert all(abs(response(f * cutoff) - 1) < 0.15 for f in (0.0, 0.2, 0.4, 0.6, 0.8))
    assert all(abs(response(f * cutoff)) < 0.1 for f in (1.3, 1.5, 1.7, 1.9))


def test_drawn_kernels_follow_the_config():
    deg = RealESRGANDegrader()
    c = deg.config
    g = gen(0)
    plans = [deg.draw_plan(g) for _ in range(1500)]
    kinds = [p["blur1"]["type"] for p in plans]
    for p in plans:
        for key, sigma in (("blur1", c.blur_sigma), ("blur2", c.blur_sigma2)):
            b = p.get(key)
            if b is None:
                continue
            assert b["size"] in c.blur_kernel_size and b["kernel"].shape == (b["size"], b["size"])
            assert abs(float(b["kernel"].sum()) - 1) < 1e-9
            if b["type"] == "sinc":
                lo = c.sinc_cutoff_small[0] if b["size"] < 13 else c.sinc_cutoff_large[0]
                assert lo <= b["cutoff"] <= math.pi
            else:
                assert sigma[0] <= b["sigma_x"] <= sigma[1] and sigma[0] <= b["sigma_y"] <= sigma[1]
                if b["type"] in ("iso", "generalized_iso", "plateau_iso"):
                    assert b["sigma_x"] == b["sigma_y"] and b["theta"] == 0
                if b["type"].startswith("generalized"):
                    assert c.betag_range[0] <= b["beta"] <= c.betag_range[1]
                if b["type"].startswith("plateau"):
                    assert c.betap_range[0] <= b["beta"] <= c.betap_range[1]
    # type frequencies: sinc 10 %, then the kernel_prob mix of the other 90 %
    n = len(kinds)
    assert abs(kinds.count("sinc") / n - 0.1) < 0.03
    for kind, prob in zip(c.kernel_list, c.kernel_prob, strict=True):
        assert abs(kinds.count(kind) / n - 0.9 * prob) < 0.04, kind
    assert abs(sum(p["blur2"] is not None for p in plans) / n - c.second_blur_prob) < 0.04
    assert abs(sum(p["final_sinc"] is not None for p in plans) / n - c.final_sinc_prob) < 0.04
    assert abs(sum(p["resize_first"] for p in plans) / n - 0.5) < 0.05


def test_filter2d_is_a_convolution():
    x = torch.zeros(1, 3, 15, 15)
    x[..., 7, 7] = 1
    k = gaussian_kernel(5, 1.0, 0.5, 0.3)
    out = filter2d(x, k)
    # an impulse reproduces the kernel (point-symmetric, like every kernel of the pipeline)
    assert torch.allclose(out[0, 0, 5:10, 5:10].double(), k, atol=1e-6)
    assert torch.allclose(filter2d(torch.full((1, 3, 8, 8), 0.3), k), torch.full((1, 3, 8, 8), 0.3), atol=1e-6)
    assert filter2d(torch.rand(2, 3, 4, 4), gaussian_kernel(21, 2.0)).shape == (2, 3, 4, 4)  # smaller than k
    # the FFT path (used on the CPU for large kernels) is the same convolution as the direct one
    asym = torch.rand(2, 11, 11, dtype=torch.float64)
    asym = asym / asym.sum(dim=(1, 2), keepdim=True)
    img = torch.rand(2, 3, 40, 33)
    direct, fft = filter2d(img, asym, method="direct"), filter2d(img, asym, method="fft")
    assert (direct - fft).abs().max() < 1e-5
    assert torch.equal(filter2d(img, asym), fft)  # auto on the CPU with k >= 9
    impulse = torch.zeros(1, 3, 15, 15)
    impulse[..., 7, 7] = 1
    shifted = torch.zeros(3, 3, dtype=torch.float64)
    shifted[0, 2] = 1  # a convolution moves the impulse by (-1, +1)
    for method in ("direct", "fft"):
        out = filter2d(impulse, shifted, method=method)
        assert out[0, 0, 6, 8] > 0.999 and out.abs().sum() < 3.001


# --- resize -------------------------------------------------------------------------------------------------


def test_resize_factors_and_sizes():
    deg = RealESRGANDegrader(scale=4)
    c = deg.config
    g = gen(1)
    plans = [deg.draw_plan(g) for _ in range(1500)]
    for key, rng, probs in (
        ("resize1", c.resize_range, c.resize_prob),
        ("resize2", c.resize_range2, c.resize_prob2),
    ):
        rs = [p[key] for p in plans]
        for r in rs:
            assert r["mode"] in c.resize_modes
            assert {
                "up": 1 <= r["factor"] <= rng[1],
                "down": rng[0] <= r["factor"] <= 1,
                "keep": r["factor"] == 1,
            }[r["kind"]]
        for kind, prob in zip(("up", "down", "keep"), probs, strict=True):
            assert abs(sum(r["kind"] == kind for r in rs) / len(rs) - prob) < 0.04
    x = torch.rand(1, 3, 40, 60)
    for mode in ("area", "bilinear", "bicubic"):
        assert resize(x, (int(40 * 0.37), int(60 * 0.37)), mode).shape[-2:] == (14, 22)
        assert resize(x, (int(40 * 1.4), int(60 * 1.4)), mode).shape[-2:] == (56, 84)
    # the applied resize follows the plan: stage 1 relative to the HQ, stage 2 relative to the LQ size
    plan = deg.draw_plan(gen(3))
    plan.update(
        resize1={"kind": "down", "factor": 0.5, "mode": "area"},
        resize2={"kind": "up", "factor": 1.2, "mode": "bilinear"},
        second_order=True,
        blur2=None,
        noise2={**plan["noise1"]},
    )
    out = deg.apply_plan(torch.rand(1, 3, 64, 48), plan)
    assert plan["resize1"]["size"] == (32, 24) and plan["resize2"]["size"] == (19, 14)
    assert out.shape[-2:] == (16, 12)


# --- noise --------------------------------------------------------------------------------------------------


def test_gaussian_noise_level_and_gray_vs_colour():
    x = torch.full((2, 3, 96, 96), 0.5)
    out = add_gaussian_noise(x, torch.tensor([5.0, 20.0]), torch.tensor([False, True]), gen(0))
    n = (out - x) * 255
    assert abs(float(n[0].std()) / 5 - 1) < 0.03 and abs(float(n[1].std()) / 20 - 1) < 0.03
    assert torch.equal(n[1, 0], n[1, 1]) and torch.equal(n[1, 0], n[1, 2])  # gray: one plane
    corr = torch.corrcoef(n[0].reshape(3, -1))
    assert corr[0, 1].abs() < 0.05 and corr[0, 2].abs() < 0.05  # colour: independent channels


def test_poisson_noise_level_matches_the_shot_model():
    levels = torch.arange(256, dtype=torch.float32) / 255  # 256 distinct values -> L = 256
    x = levels.repeat(3, 96, 1)[None]  # (1, 3, 96, 256)
    scale = 2.0
    out = add_poisson_noise(x, scale, False, gen(0))
    mid = (levels > 0.25) & (levels < 0.75)  # away from the clamp
    noise = (out - x)[..., mid] / scale
    want = float(levels[mid].mean() / 256)  # var = img / L
    assert abs(float(noise.pow(2).mean()) / want - 1) < 0.06
    gray = add_poisson_noise(x, scale, True, gen(0))
    assert torch.equal(gray[0, 0] - x[0, 0], gray[0, 1] - x[0, 1])


def test_noise_level_measured_end_to_end_matches_the_drawn_sigma():
    """Only noise and near-lossless JPEG (quality 100) on a flat image, scale 1: the luma noise of the output
    is the drawn sigma times 1 (gray noise) or sqrt(0.299^2 + 0.587^2 + 0.114^2) (colour noise)."""
    cfg = DegradationConfig(
        blur_kernel_size=(1,),
        blur_kernel_size2=(1,),
        sinc_prob=0.0,
        resize_prob=(0, 0, 1),
        gaussian_noise_prob=1.0,
        noise_range=(5.0, 30.0),
        jpeg_range=(100.0, 100.0),
        jpeg_range2=(100.0, 100.0),
        second_order_prob=0.0,
        final_sinc_prob=0.0,
    )
    deg = RealESRGANDegrader(cfg, scale=1)
    x = torch.full((6, 3, 128, 128), 0.5)
    out, plans = deg.degrade(x, gen(4))
    luma = 0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]
    colour_factor = math.sqrt(0.299**2 + 0.587**2 + 0.114**2)
    for i, plan in enumerate(plans):
        sigma = plan["noise1"]["sigma"]
        expected = sigma * (1.0 if plan["noise1"]["gray"] else colour_factor)
        measured = float(luma[i].std()) * 255
        assert abs(measured / expected - 1) < 0.05, (sigma, plan["noise1"]["gray"], measured)
    assert {p["noise1"]["gray"] for p in plans} == {True, False}  # both kinds were exercised


# --- JPEG ---------------------------------------------------------------------------------------------------


def _blockiness(y):
    """Mean |step| across 8x8 block borders over mean |step| inside blocks (1 for an image without blocks)."""
    dh, dv = (y[..., 1:] - y[..., :-1]).abs(), (y[..., 1:, :] - y[..., :-1, :]).abs()
    eh, ev = torch.arange(dh.shape[-1]) % 8 == 7, torch.arange(dv.shape[-2]) % 8 == 7
    return float((dh[..., eh].mean() + dv[..., ev, :].mean()) / (dh[..., ~eh].mean() + dv[..., ~ev, :].mean()))


def _photo(name):
    from sanasr_cli.data.io import read_image
    from tests.helpers import REPO_ROOT

    return read_image(REPO_ROOT / "examples" / "hq" / f"{name}.png")[0][None]


def _psnr(a, b):
    return 10 * math.log10(1 / float(((a - b) ** 2).mean()))


def test_lower_jpeg_quality_gives_more_blockiness_and_error():
    x = _photo("cat")
    qualities = [10, 30, 50, 70, 95]
    outs = [jpeg_compress(x, q) for q in qualities]
    blk = [_blockiness(o) for o in outs]
    err = [_psnr(o, x) for o in outs]
    assert blk == sorted(blk, reverse=True) and blk[0] > 2.5 and blk[-1] < 1.2 and abs(_blockiness(x) - 1) < 0.05
    assert err == sorted(err)
    for o in outs:
        assert torch.equal(o * 255, (o * 255).round())
    # per-sample qualities in one batch
    both = jpeg_compress(torch.cat([x, x]), torch.tensor([10.0, 95.0]))
    assert torch.equal(both[0:1], outs[0]) and torch.equal(both[1:2], outs[-1])


def test_torch_jpeg_tracks_libjpeg():
    import io as _io

    from PIL import Image

    x = _photo("coffee")
    arr = (x[0] * 255).round().byte().permute(1, 2, 0).numpy()
    for q in (10, 50, 90):
        buf = _io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        from sanasr_cli.data.degradation import jpeg_quant_tables

        luma, chroma = jpeg_quant_tables(torch.tensor([float(q)]))
        tables = Image.open(buf).quantization
        assert (
            list(tables[0]) == luma[0].flatten().int().tolist()
            and list(tables[1]) == chroma[0].flatten().int().tolist()
        )
        ours, ref = jpeg_compress(x, q), jpeg_compress_pil(x, q)
        assert _psnr(ours, ref) > 38
        assert abs(_psnr(ours, x) - _psnr(ref, x)) < 0.5
    # the degrader runs with either backend
    cfg = DegradationConfig(jpeg_backend="pil")
    assert RealESRGANDegrader(cfg)(photo_batch(1, 32), gen(0)).shape == (1, 3, 8, 8)


def test_half_precision_input_and_generator_kinds():
    hq = photo_batch(2, 32)
    lq = RealESRGANDegrader()(hq.bfloat16(), gen(0))
    assert lq.dtype == torch.bfloat16 and lq.shape == (2, 3, 8, 8)
    # the plan for a seed does not depend on the image: same draws for another image of another size
    deg = RealESRGANDegrader()
    _, plans_a = deg.degrade(photo_batch(1, 32), gen(5))
    _, plans_b = deg.degrade(photo_batch(1, 64, seed=3), gen(5))

    def strip(plan):  # drop tensors and the sizes that depend on the image
        drop = ("kernel", "size")
        return {k: {a: b for a, b in v.items() if a not in drop} if isinstance(v, dict) else v for k, v in plan.items()}

    assert strip(plans_a[0]) == strip(plans_b[0])
