"""`sanasr eval` library: metric values (vs pyiqa directly and vs a hand computation), protocols, pairing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from sanasr_cli.evaluation.metrics import (
    METRICS,
    PATCH_SIZE,
    ProtocolError,
    UnknownMetricError,
    center_crop,
    evaluate_pairs,
    parse_metrics,
)
from sanasr_cli.evaluation.pairing import PairingError, pair_folders, pairing_key
from tests.helpers import REPO_ROOT

HQ = sorted((REPO_ROOT / "examples" / "hq").glob("*.png"))


def degrade(im: Image.Image, seed: int) -> Image.Image:
    """Blur + JPEG: a realistic restored-looking image of the same size."""
    buf = io.BytesIO()
    im.filter(ImageFilter.GaussianBlur(1.0 + 0.3 * seed)).save(buf, format="JPEG", quality=40 + 10 * seed)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.fixture
def photo_pairs(tmp_path):
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    sr.mkdir(), hr.mkdir()
    for i, f in enumerate(HQ):
        im = Image.open(f).convert("RGB")
        im.save(hr / f.name)
        degrade(im, i).save(sr / f"{f.stem}_SR.png")
    return sr, hr


def test_psnr_ssim_equal_pyiqa_direct_on_real_photos(photo_pairs):
    import pyiqa

    sr, hr = photo_pairs
    pairs = pair_folders(sr, hr)
    assert [p.key for p in pairs] == [f.stem for f in HQ]
    result = evaluate_pairs(pairs, parse_metrics("psnr,ssim"), protocol="full")
    assert result.ok
    # pyiqa's own path: it reads the files itself; same variant (Y of YCbCr).
    psnr = pyiqa.create_metric("psnry", color_space="ycbcr", device="cpu")
    ssim = pyiqa.create_metric("ssim", color_space="ycbcr", downsample=False, device="cpu")
    for s, p in zip(result.images, pairs, strict=True):
        assert s.values["psnr"] == pytest.approx(float(psnr(str(p.sr), str(p.hr))), abs=1e-6)
        assert s.values["ssim"] == pytest.approx(float(ssim(str(p.sr), str(p.hr))), abs=1e-9)
        assert 15 < s.values["psnr"] < 40 and 0.3 < s.values["ssim"] < 1
    # YIQ-Y (pyiqa's default colour space for psnry) gives a different number: the variant matters.
    yiq = pyiqa.create_metric("psnry", device="cpu")
    assert abs(float(yiq(str(pairs[0].sr), str(pairs[0].hr))) - result.images[0].values["psnr"]) > 1e-3
    means = result.means
    assert means["psnr"] == pytest.approx(np.mean([s.values["psnr"] for s in result.images]))


def _y(rgb_uint8: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 Y in [0, 1] (MATLAB rgb2ycbcr / 255), from an (H, W, 3) uint8 image."""
    x = rgb_uint8.astype(np.float64) / 255
    return (16 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255


def _ssim_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) on 0..255 images: 11x11 Gaussian (sigma 1.5) window, 'valid' region."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()

    def filt(x):
        v = np.lib.stride_tricks.sliding_window_view(x, (11, 11))
        return (v * win).sum(axis=(-1, -2))

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    va, vb, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
    cs = np.maximum((2 * cov + c2) / (va + vb + c2), 0)
    return float((((2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)) * cs).mean())


def test_psnr_ssim_match_a_hand_computation_on_a_tiny_pair(tmp_path):
    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, (19, 23, 3), dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-20, 21, hr.shape), 0, 255).astype(np.uint8)
    (tmp_path / "sr").mkdir(), (tmp_path / "hr").mkdir()
    Image.fromarray(sr).save(tmp_path / "sr" / "x.png")
    Image.fromarray(hr).save(tmp_path / "hr" / "x.png")
    result = evaluate_pairs(pair_folders(tmp_path / "sr", tmp_path / "hr"), parse_metrics("psnr,ssim"))
    ys, yh = _y(sr), _y(hr)
    assert result.images[0].values["psnr"] == pytest.approx(10 * np.log10(1 / np.mean((ys - yh) ** 2)), abs=1e-4)
    ssim = _ssim_by_hand(np.round(ys * 255), np.round(yh * 255))  # SSIM's Y is rounded to integers 0..255
    assert result.images[0].values["ssim"] == pytest.approx(ssim, abs=1e-9)


@pytest.mark.parametrize("hw", [(256, 256), (263, 301), (300, 257), (511, 700)])
def test_center_crop_is_exactly_the_centre(hw):
    h, w = hw
    x = torch.arange(h * w, dtype=torch.float64).reshape(1, h, w)
    c = center_crop(x)
    assert c.shape[-2:] == (PATCH_SIZE, PATCH_SIZE)
    top, left = (h - PATCH_SIZE) // 2, (w - PATCH_SIZE) // 2
    assert c[0, 0, 0] == top * w + left and c[0, -1, -1] == (top + 255) * w + left + 255
    # Equal margins up to one pixel, the extra one at the bottom/right.
    assert top <= h - top - PATCH_SIZE <= top + 1 and left <= w - left - PATCH_SIZE <= left + 1
    with pytest.raises(ProtocolError):
        center_crop(torch.zeros(1, 255, 400))


def test_patch_protocol_scores_only_the_centre_crop(tmp_path):
    h, w = 263, 301
    top, left = (h - PATCH_SIZE) // 2, (w - PATCH_SIZE) // 2
    hr = np.asarray(Image.open(HQ[1]).convert("RGB").resize((w, h), Image.BICUBIC)).copy()
    sr = hr.copy()
    sr[:top] = 0  # differences only outside the centre crop
    sr[top + PATCH_SIZE :] = 255
    sr[:, :left] = 17
    (tmp_path / "sr").mkdir(), (tmp_path / "hr").mkdir()
    Image.fromarray(hr).save(tmp_path / "hr" / "p.png")

    def score(img, protocol):
        Image.fromarray(img).save(tmp_path / "sr" / "p.png")
        return (
            evaluate_pairs(pair_folders(tmp_path / "sr", tmp_path / "hr"), parse_metrics("psnr"), protocol=protocol)
            .images[0]
            .values["psnr"]
        )

    assert score(sr, "patch") == pytest.approx(80.0)  # identical crops: pyiqa's eps caps PSNR at 80 dB
    assert score(sr, "full") < 30
    inside = sr.copy()
    inside[top, left + PATCH_SIZE - 1] = 255 - inside[top, left + PATCH_SIZE - 1]  # corner pixel of the crop
    assert score(inside, "patch") < 70
    outside = sr.copy()
    outside[top + PATCH_SIZE, left + PATCH_SIZE] = 0  # first pixel past the crop
    assert score(outside, "patch") == pytest.approx(80.0)


def test_protocols_refuse_sizes_that_do_not_fit(tmp_path):
    (tmp_path / "sr").mkdir(), (tmp_path / "hr").mkdir()
    for name, size in (("a", (300, 280)), ("b", (200, 260))):
        Image.new("RGB", size, (9, 9, 9)).save(tmp_path / "hr" / f"{name}.png")
    Image.new("RGB", (300, 281), (9, 9, 9)).save(tmp_path / "sr" / "a.png")
    Image.new("RGB", (200, 260), (9, 9, 9)).save(tmp_path / "sr" / "b.png")
    pairs = pair_folders(tmp_path / "sr", tmp_path / "hr")
    with pytest.raises(ProtocolError, match=r"1 image\(s\).*a\.png 300x281 vs a\.png 300x280"):
        evaluate_pairs(pairs, parse_metrics("psnr"), protocol="full")
    with pytest.raises(ProtocolError, match=r"b\.png is 200x260, smaller than the 256x256 patch"):
        evaluate_pairs(pairs, parse_metrics("psnr"), protocol="patch")


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (8, 8)).save(folder / n)
    return folder


def test_pairing_by_stem_with_suffixes(tmp_path):
    assert pairing_key("0801_SR", ("_sr",)) == "0801"
    assert pairing_key("Canon_001_LR4", ("_lr4", "_lr")) == "canon_001"
    assert pairing_key("_sr", ("_sr",)) == "_sr"  # never the whole stem
    sr = _touch(tmp_path / "sr", "0801_SR.png", "0802_out.png", "0803.png", "img_x4.jpg")
    hr = _touch(tmp_path / "hr", "0801.png", "0802_HR.png", "0803.png", "img.png")
    pairs = pair_folders(sr, hr)
    assert [(p.sr.name, p.hr.name) for p in pairs] == [
        ("0801_SR.png", "0801.png"),
        ("0802_out.png", "0802_HR.png"),
        ("0803.png", "0803.png"),
        ("img_x4.jpg", "img.png"),
    ]


def test_pairing_errors_list_every_problem(tmp_path):
    sr = _touch(tmp_path / "sr", "a.png", "b_sr.png", "c.png")
    hr = _touch(tmp_path / "hr", "a.png", "b.png", "d.png", "e.png")
    with pytest.raises(PairingError) as e:
        pair_folders(sr, hr)
    msg = str(e.value)
    assert "1 in" in msg and "c.png" in msg and "2 in" in msg and "d.png, e.png" in msg
    _touch(sr, "a_SR.png")
    with pytest.raises(PairingError, match=r"a\.png and a_SR\.png \(key 'a'\)"):
        pair_folders(sr, hr)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PairingError, match="holds no images"):
        pair_folders(tmp_path / "empty", hr)
    with pytest.raises(PairingError, match="does not exist"):
        pair_folders(tmp_path / "nope", hr)


def test_grayscale_and_rgba_are_converted_and_reported(tmp_path):
    rgb = np.asarray(Image.open(HQ[0]).convert("RGB")).copy()
    gray = Image.fromarray(rgb).convert("L")
    (tmp_path / "sr").mkdir(), (tmp_path / "hr").mkdir(), (tmp_path / "sr2").mkdir()
    gray.save(tmp_path / "hr" / "g.png")
    rgba = Image.fromarray(rgb).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 40))
    rgba.save(tmp_path / "sr" / "g.png")
    Image.fromarray(rgb).save(tmp_path / "sr2" / "g.png")
    result = evaluate_pairs(pair_folders(tmp_path / "sr", tmp_path / "hr"), parse_metrics("psnr"))
    assert set(result.images[0].converted.values()) == {"RGBA", "L"}
    # Alpha dropped (not composited): the RGBA file scores exactly like its RGB content.
    plain = evaluate_pairs(pair_folders(tmp_path / "sr2", tmp_path / "hr"), parse_metrics("psnr"))
    assert result.images[0].values["psnr"] == plain.images[0].values["psnr"]


def test_metric_names_and_variants_match_pyiqa():
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    for m in METRICS.values():
        if m.pyiqa_name is None:  # sanasr's own (shipped) metric that equals no pyiqa metric: BRISQUE
            assert m.shipped and m.mode == "NR", m.name
            continue
        cfg = DEFAULT_CONFIGS[m.pyiqa_name]
        assert cfg["metric_mode"] == m.mode, m.name
        assert bool(cfg.get("lower_better", False)) == m.lower_better, m.name
    # NIQE is pyiqa's 'niqe' computation with its default options (Y of YIQ), with parameters shipped in sanasr
    assert DEFAULT_CONFIGS["niqe"]["metric_opts"] == {"type": "NIQE", "test_y_channel": True}
    assert "color_space='yiq'" in METRICS["niqe"].variant and METRICS["brisque"].pyiqa_name is None
    assert METRICS["psnr"].variant == "pyiqa.create_metric('psnry', color_space='ycbcr')"
    with pytest.raises(UnknownMetricError, match="unknown metric.*psnrr.*known: psnr, ssim"):
        parse_metrics("psnr,psnrr")
    with pytest.raises(UnknownMetricError, match="need reference"):
        parse_metrics("psnr,musiq", need_reference=False)
    assert [m.name for m in parse_metrics("ssim, PSNR,ssim")] == ["ssim", "psnr"]
