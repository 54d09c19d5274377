"""The image read/write contract for every kind of file a user has: modes, bit depths, alpha, CMYK, ICC, EXIF,
and each bad input giving one clear ImageReadError."""

import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageFile

from sanasr_cli.data.io import (
    TEMP_MARK,
    is_complete_image,
    probe_image,
    read_image,
    remove_stale_temps,
    write_image,
)
from sanasr_cli.errors import ImageReadError, ImageWriteError
from tests.helpers import make_photo_like


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "tif", "bmp"])
def test_rgb_8bit_formats_round_trip(tmp_path, ext):
    arr = make_photo_like(9, 14, 3)
    src = tmp_path / f"in.{ext}"
    Image.fromarray(arr).save(src, quality=100) if ext in ("jpg", "webp") else Image.fromarray(arr).save(src)
    img, info = read_image(src)
    assert img.shape == (3, 9, 14) and img.dtype == torch.float32 and info.bit_depth == 8
    assert not info.grayscale and info.alpha is None
    write_image(tmp_path / f"out.{ext}", img, quality=100)
    back = np.asarray(Image.open(tmp_path / f"out.{ext}").convert("RGB")).astype(int)
    tol = 0 if ext in ("png", "tif", "bmp") else 12
    assert np.abs(back - np.asarray(Image.open(src).convert("RGB")).astype(int)).max() <= tol


def test_16bit_rgb_png_and_tiff_keep_16_bits(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, size=(6, 5, 3), dtype=np.uint16)
    for ext in ("png", "tif"):
        cv2.imwrite(str(tmp_path / f"in.{ext}"), arr[:, :, ::-1])  # OpenCV writes BGR
        img, info = read_image(tmp_path / f"in.{ext}")
        assert info.bit_depth == 16 and img.shape == (3, 6, 5)
        # values finer than 1/255 survive: 16-bit precision, not Pillow's 8-bit reduction
        assert torch.allclose(img, torch.from_numpy(arr.astype(np.float32) / 65535).permute(2, 0, 1), atol=1e-6)
        write_image(tmp_path / f"out.{ext}", img, bit_depth=16)
        back = cv2.imread(str(tmp_path / f"out.{ext}"), cv2.IMREAD_UNCHANGED)
        assert back.dtype == np.uint16 and np.array_equal(back[:, :, ::-1], arr)


def test_16bit_detection_reads_tiles_as_pillow_10_stores_them(tmp_path):
    """Pillow < 11 keeps im.tile as plain tuples, later ones as named tuples: both must be read (pillow>=10)."""
    from sanasr_cli.data.io import _is_16bit

    cv2.imwrite(str(tmp_path / "in.png"), np.full((4, 4, 3), 40000, dtype=np.uint16))
    with Image.open(tmp_path / "in.png") as im:
        assert _is_16bit(im)
        im.tile = [tuple(t) for t in im.tile]  # what Pillow 10 has
        assert _is_16bit(im)


def test_16bit_gray_stays_16bit_gray(tmp_path):
    arr = (np.arange(7 * 4, dtype=np.uint16) * 2341).reshape(7, 4)
    cv2.imwrite(str(tmp_path / "g.png"), arr)
    img, info = read_image(tmp_path / "g.png")
    assert info.grayscale and info.bit_depth == 16 and img.shape == (3, 7, 4)
    write_image(tmp_path / "o.png", img, bit_depth=16, grayscale=True)
    back = cv2.imread(str(tmp_path / "o.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.ndim == 2 and np.abs(back.astype(int) - arr.astype(int)).max() <= 1


def test_grayscale_8bit_written_back_as_grayscale(tmp_path):
    arr = make_photo_like(8, 8, 1)[:, :, 0]
    Image.fromarray(arr, "L").save(tmp_path / "g.png")
    img, info = read_image(tmp_path / "g.png")
    assert info.grayscale and torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    write_image(tmp_path / "o.png", img, grayscale=True)
    out = Image.open(tmp_path / "o.png")
    assert out.mode == "L" and np.array_equal(np.asarray(out), arr)


def test_rgba_alpha_is_separate_and_reattached(tmp_path):
    rgba = make_photo_like(6, 9, 2)
    alpha = np.linspace(0, 255, 6 * 9).reshape(6, 9).astype(np.uint8)
    Image.fromarray(np.dstack([rgba, alpha]), "RGBA").save(tmp_path / "t.png")
    img, info = read_image(tmp_path / "t.png")
    assert img.shape == (3, 6, 9) and info.alpha.shape == (1, 6, 9)
    assert np.array_equal((info.alpha[0] * 255).round().byte().numpy(), alpha)
    write_image(tmp_path / "o.png", img, alpha=info.alpha)
    out = Image.open(tmp_path / "o.png")
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[:, :, 3], alpha)
    with pytest.raises(ImageWriteError, match="transparency"):
        write_image(tmp_path / "o.jpg", img, alpha=info.alpha)


def test_palette_with_transparency_reads_alpha(tmp_path):
    p = Image.new("P", (5, 4))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    img, info = read_image(tmp_path / "p.png")
    assert info.alpha is not None and info.alpha[0, 0, 0] == 1 and info.alpha[0, 1, 1] == 0
    assert torch.allclose(img[:, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    plain = Image.new("P", (5, 4))
    plain.save(tmp_path / "q.png")
    assert read_image(tmp_path / "q.png")[1].alpha is None


def test_cmyk_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)  # pure red in CMYK
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    for name in ("c.jpg", "c.tif"):
        img, info = read_image(tmp_path / name)
        assert info.mode == "CMYK" and img.shape == (3, 3, 4) and info.icc_profile is None
        assert img[0].mean() > 0.9 and img[1].mean() < 0.1 and img[2].mean() < 0.1


def test_icc_profile_is_kept_8_and_16_bit(tmp_path):
    icc = _srgb_icc()
    Image.fromarray(make_photo_like(5, 5)).save(tmp_path / "i.png", icc_profile=icc)
    img, info = read_image(tmp_path / "i.png")
    assert info.icc_profile == icc
    for ext in ("png", "jpg", "webp", "tif"):
        write_image(tmp_path / f"o.{ext}", img, icc_profile=info.icc_profile)
        assert Image.open(tmp_path / f"o.{ext}").info.get("icc_profile") == icc, ext
    write_image(tmp_path / "o16.png", img, bit_depth=16, icc_profile=icc)
    im16 = Image.open(tmp_path / "o16.png")
    assert im16.info.get("icc_profile") == icc
    assert cv2.imread(str(tmp_path / "o16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_exif_orientation_applied_to_16bit_like_pillow_does_to_8bit(tmp_path):
    arr8 = make_photo_like(4, 7, 5)
    for orientation in range(1, 9):
        im = Image.fromarray(arr8)
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(tmp_path / "o.png", exif=exif)
        img, info = read_image(tmp_path / "o.png")
        from PIL import ImageOps

        expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
        assert np.array_equal((img * 255).round().byte().permute(1, 2, 0).numpy(), expected), orientation
        assert probe_image(tmp_path / "o.png")[0] == (info.width, info.height)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header, without the bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )


def test_bad_inputs_each_give_one_clear_error(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(make_photo_like(32, 32)).save(good)
    Image.fromarray(make_photo_like(32, 32)).save(tmp_path / "good.jpg")
    cases = {
        "empty.png": (b"", "empty file"),
        "text.png": (b"hello, I am text", "not a recognised image"),
        "truncated.png": (good.read_bytes()[: len(good.read_bytes()) // 2], "unreadable"),
        "truncated.jpg": ((tmp_path / "good.jpg").read_bytes()[:300], "unreadable"),
        "bomb.png": (_png_header_only(100_000, 100_000), "exceeds the 64 MP limit"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageReadError, match=message) as e:
            read_image(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)
    Image.new("F", (3, 3)).save(tmp_path / "float.tif")
    with pytest.raises(ImageReadError, match="unsupported image mode 'F'"):
        read_image(tmp_path / "float.tif")
    # the pixel limit is a flag, not Pillow's fixed one: raised, the header is accepted (then the data fails)
    with pytest.raises(ImageReadError, match="unreadable|truncated"):
        read_image(tmp_path / "bomb.png", max_pixels=20_000_000_000)


def test_atomic_write_leaves_nothing_on_interrupt(tmp_path, monkeypatch):
    import sanasr_cli.data.io as io_mod

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(io_mod.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "x.png", torch.rand(3, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_truncated_files_fail_even_when_another_library_allows_them(tmp_path, monkeypatch):
    # pyiqa 0.1.15 sets this on import; our reader must still name a cut-off file instead of padding it grey
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    Image.fromarray(make_photo_like(48, 48)).save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with Image.open(tmp_path / "cut.png") as im:
        im.load()  # what the switch does to Pillow itself: no error
    with pytest.raises(ImageReadError, match="unreadable"):
        read_image(tmp_path / "cut.png")
    assert not is_complete_image(tmp_path / "cut.png")
    assert is_complete_image(tmp_path / "good.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is given back


def test_completeness_check_and_stale_temp_cleanup(tmp_path):
    write_image(tmp_path / "x.png", torch.rand(3, 8, 6))
    assert is_complete_image(tmp_path / "x.png", (6, 8))
    assert not is_complete_image(tmp_path / "x.png", (6, 9))
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "x.png").write_bytes(data[: len(data) // 2])
    assert not is_complete_image(tmp_path / "x.png")
    (tmp_path / f".x.png{TEMP_MARK}.abc").write_bytes(b"partial")
    (tmp_path / ".x.png.other").write_bytes(b"not ours")
    assert remove_stale_temps(tmp_path / "x.png") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.png.other", "x.png"]
