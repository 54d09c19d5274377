import stat

import numpy as np
import pytest
import torch
from PIL import Image

from sanasr_cli.data.io import list_images, read_image, write_image
from sanasr_cli.errors import ImageReadError


def test_read_write_round_trip(tmp_path):
    arr = (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)
    Image.fromarray(arr).save(tmp_path / "x.png")
    img, info = read_image(tmp_path / "x.png")
    assert img.shape == (3, 5, 7) and img.dtype == torch.float32 and (info.width, info.height) == (7, 5)
    write_image(tmp_path / "y.png", img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "y.png")), arr)
    mode = stat.S_IMODE((tmp_path / "y.png").stat().st_mode)
    assert mode & stat.S_IRGRP  # not the 0600 of a temp file
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((4, 6, 3), np.uint8)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif)
    img, info = read_image(tmp_path / "r.jpg")
    assert img.shape == (3, 6, 4)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_files_raise_one_clear_error(tmp_path, content):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(p)


def test_pixel_limit(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="limit"):
        read_image(tmp_path / "big.png", max_pixels=5000)


def test_list_images(tmp_path):
    for name in ["b.png", "a.JPG", ".hidden.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.webp").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.JPG", "b.png", "c.webp"]
