"""Image read/write contract.

read_image(path) -> (image, info): image is float32 (3, H, W) in [0, 1], RGB, EXIF orientation applied.
write_image(path, image) writes atomically (temp file in the same folder, then os.replace), so an interrupted
run never leaves a half-written output.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from sanasr_cli.errors import ImageReadError, ImageWriteError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
DEFAULT_MAX_PIXELS = 64_000_000  # decompression-bomb guard: refuse inputs whose header claims more pixels


@dataclass
class ImageInfo:
    path: Path
    width: int
    height: int
    mode: str  # PIL mode of the file as read (before conversion)
    format: str | None


def list_images(root: Path, recursive: bool = False) -> list[Path]:
    """Image files under `root` (or [root] for a file), sorted, skipping hidden files; links are not followed."""
    root = Path(root)
    if root.is_file():
        return [root]
    pattern = "**/*" if recursive else "*"
    return sorted(
        p
        for p in root.glob(pattern)
        if p.is_file() and not p.is_symlink() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def read_image_uint8(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageInfo]:
    """Read an image as uint8 RGB (H, W, 3), EXIF orientation applied; ImageReadError (one line) otherwise.

    Data loaders crop this array before converting to float (cheaper than converting a whole 2K photo)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(
                    f"{path}: {w}x{h} = {w * h / 1e6:.0f} MP exceeds the {max_pixels / 1e6:.0f} MP limit "
                    f"(raise it with --max-pixels if the file is trusted)"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im.load()
            mode, fmt = im.mode, im.format
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a recognised image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"{path}: unreadable image ({e})") from None
    array = np.asarray(rgb, dtype=np.uint8)
    return array, ImageInfo(path=path, width=rgb.width, height=rgb.height, mode=mode, format=fmt)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, ImageInfo]:
    """Read an image as float32 RGB (3, H, W) in [0, 1]; raise ImageReadError (one clear line) otherwise."""
    array, info = read_image_uint8(path, max_pixels)
    return uint8_to_tensor(array), info


def uint8_to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array)  # torch wants a writable, contiguous buffer
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded."""
    return image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def write_image(path: str | Path, image: torch.Tensor) -> None:
    """Write a (3, H, W) [0, 1] image; the format follows the suffix. Atomic: temp file + rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    except OSError as e:
        raise ImageWriteError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(to_uint8(image)).save(f, format=_pil_format(path))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ImageWriteError(f"{path}: cannot write ({e})") from None
        raise


def _pil_format(path: Path) -> str:
    ext = path.suffix.lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
            ".bmp": "BMP"}.get(ext, "PNG")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
