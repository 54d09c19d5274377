"""Image read/write contract.

read_image(path) -> (image, info)
    image: float32 (3, H, W) in [0, 1], RGB, EXIF orientation applied. Grayscale files are replicated to three
    channels (info.grayscale), CMYK / YCbCr / palette files are converted to RGB (CMYK through its ICC profile
    when it carries one). 16-bit PNG/TIFF files keep their 16-bit precision (read through OpenCV, since Pillow
    reduces 48-bit RGB to 8 bits); info.bit_depth says which. Transparency (RGBA, LA, palette with a
    transparent colour) comes back separately as info.alpha: float32 (1, H, W) in [0, 1].
    info.icc_profile holds the file's ICC profile when the returned pixels are still in its colour space.
write_image(path, image, bit_depth=8, grayscale=False, alpha=None, icc_profile=None)
    writes atomically (temp file in the same folder, then os.replace), so an interrupted run, Ctrl-C included,
    never leaves a half-written output. The format follows the suffix; 16-bit is written for PNG/TIFF only.

Every unreadable, refused or unsupported input raises ImageReadError with one line that names the file.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from sanasr_cli.errors import ImageReadError, ImageWriteError
from sanasr_cli.safe_files import note_inputs

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
# The only decoders an input file may reach, whatever its name says: Pillow would otherwise pick any of its
# plugins by content (a PostScript file named .png goes to the EPS plugin, which runs Ghostscript on it).
# (Camera JPEGs with extra frames still open, as MPO, through the JPEG entry.)
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
DEFAULT_MAX_PIXELS = 64_000_000  # decompression-bomb guard: refuse inputs whose header claims more pixels
TEMP_MARK = ".sanasr-tmp"  # in the names of temp files, so a resumed run can recognise and remove stale ones

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"}
_SUPPORTED_MODES = _GRAY_MODES | {"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
_SIXTEEN_BIT_FORMATS = {"PNG", "TIFF"}


@dataclass
class ImageInfo:
    path: Path
    width: int  # after EXIF orientation
    height: int
    mode: str  # PIL mode of the file as read (before conversion)
    format: str | None
    bit_depth: int = 8  # 8 or 16 (per channel)
    grayscale: bool = False
    alpha: torch.Tensor | None = None  # (1, H, W) float32 in [0, 1]
    icc_profile: bytes | None = None
    frames: int = 1  # frames in the file (animated GIF/WebP/TIFF pages); only the first is read

    @property
    def has_alpha(self) -> bool:
        return self.alpha is not None


def list_images(root: Path, recursive: bool = False) -> list[Path]:
    """Image files under `root` (or [root] for a file), sorted, skipping hidden files and folders; links
    are not followed (a symlinked file or folder could lead out of the input tree)."""
    return list_inputs(root, recursive)[0]


def list_inputs(root: Path, recursive: bool = False) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files, [(other file, why it is skipped)]) under `root`, both sorted: every file of the walked
    folders is in exactly one list, so a report can account for each of them."""
    root = Path(root)
    if root.is_file():
        note_inputs(root)
        return [root], []
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if recursive:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        else:
            dirnames[:] = []
        for name in filenames:
            p = Path(dirpath) / name
            if name.startswith("."):
                continue  # hidden files (ours included: temp files, the output record) are not inputs
            if p.is_symlink():
                skipped.append((p, "a symbolic link (links are not followed)"))
            elif p.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((p, f"not an image file name ({', '.join(IMAGE_EXTENSIONS)})"))
            else:
                found.append(p)
    note_inputs(*found)
    return sorted(found), sorted(skipped)


def open_image(path_or_file) -> Image.Image:
    """Image.open restricted to ALLOWED_FORMATS (the caller handles UnidentifiedImageError)."""
    return Image.open(path_or_file, formats=ALLOWED_FORMATS)


@contextlib.contextmanager
def _pil_decode_settings():
    """Pillow's global switches as our reader needs them, whatever another library set:
    - no pixel limit: our own (checked on the header right after open) replaces Pillow's, which would refuse
      files the user allowed with --max-pixels;
    - truncated files fail: pyiqa 0.1.15 sets ImageFile.LOAD_TRUNCATED_IMAGES = True on import, which would make
      a cut-off photo decode silently with a grey bottom instead of being named and skipped."""
    old_limit, old_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_limit, old_truncated


def _tile_rawmodes(im: Image.Image) -> list[str]:
    """The decoder arguments of each tile (they name the raw mode, e.g. 'I;16B'). By index, not `.args`: Pillow < 11
    stores tiles as plain tuples (codec, extents, offset, args), later ones as a named tuple of the same order."""
    return [str(t[3]) for t in (im.tile or [])]


def _is_16bit(im: Image.Image) -> bool:
    if im.mode.startswith("I;16") or im.mode == "I":
        return True
    rawmodes = _tile_rawmodes(im)
    return im.format in _SIXTEEN_BIT_FORMATS and any(";16" in r for r in rawmodes)


def probe_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[tuple[int, int], str | None, bool]:
    """Header only (no pixel decoding): ((width, height) after EXIF orientation, format, has transparency).
    Raises the same one-line ImageReadError as read_image for files it can already tell are bad."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: empty file (0 bytes)")
        with _pil_decode_settings(), open_image(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(
                    f"{path}: {w}x{h} = {w * h / 1e6:.0f} MP exceeds the {max_pixels / 1e6:.0f} MP limit "
                    f"(raise it with --max-pixels if the file is trusted)"
                )
            orientation = exif_orientation(im, path)
            alpha = im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (im.mode == "P" and "transparency" in im.info)
            fmt = im.format
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"{path}: not a recognised image file (read formats: {', '.join(ALLOWED_FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageReadError(
            f"{path}: unreadable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    return ((h, w) if orientation in (5, 6, 7, 8) else (w, h)), fmt, alpha


def exif_orientation(im: Image.Image, path: Path) -> int:
    """The EXIF orientation (1-8) of an opened image, without decoding a pixel: Pillow's `getexif()` decodes the
    whole of a PNG whose eXIf chunk comes after its image data (a 20000 x 20000 PNG of 1 MB: 1.5 GB) to find
    it, so for a PNG the chunks after the image data are walked here instead (their headers only)."""
    if im.format != "PNG" or "exif" in im.info:
        return int(im.getexif().get(0x0112, 1) or 1)
    data = _png_exif_chunk(path)
    if data is None:
        return 1
    exif = Image.Exif()
    try:
        exif.load(b"Exif\x00\x00" + data)
    except (SyntaxError, ValueError, struct.error, OSError):
        return 1  # a damaged EXIF block: as if there were none (Pillow would not orient by it either)
    return int(exif.get(0x0112, 1) or 1)


def _png_exif_chunk(path: Path) -> bytes | None:
    """The data of a PNG's eXIf chunk, found by reading chunk headers and skipping their data; None if none."""
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                return f.read(min(length, 1 << 20))  # EXIF in a PNG is a few KB
            if kind == b"IEND":
                return None
            f.seek(length + 4, os.SEEK_CUR)  # the data and its CRC


def _decode(path: Path, max_pixels: int) -> tuple[np.ndarray, ImageInfo]:
    """(H, W, C) uint8 or uint16 pixels, EXIF orientation applied, C = 1 (gray), 2 (gray + alpha), 3 (RGB) or
    4 (RGBA); info without alpha. ImageReadError with one line for anything unreadable or refused."""
    note_inputs(path)  # a file the run reads: never one it writes (safe_files)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: empty file (0 bytes)")
        with _pil_decode_settings(), open_image(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(
                    f"{path}: {w}x{h} = {w * h / 1e6:.0f} MP exceeds the {max_pixels / 1e6:.0f} MP limit "
                    f"(raise it with --max-pixels if the file is trusted)"
                )
            mode, fmt = im.mode, im.format
            sixteen = _is_16bit(im)  # before getexif(), which may decode the image and drop the tile info
            if mode.startswith("I") and _int32_samples(im):
                raise ImageReadError(
                    f"{path}: 32-bit integer samples cannot be represented in 8 or 16 bits (refused, not "
                    "wrapped); convert it to 16-bit first"
                )
            if mode not in _SUPPORTED_MODES or (mode == "I" and not sixteen):
                raise ImageReadError(f"{path}: unsupported image mode '{mode}' (use 8/16-bit gray, RGB, RGBA, CMYK)")
            frames = int(getattr(im, "n_frames", 1) or 1)
            orientation = exif_orientation(im, path)
            icc = im.info.get("icc_profile") or None
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                if sixteen:
                    array = _read_16bit(path)
                    gray = array.ndim == 2 or array.shape[2] in (1, 2)
                else:
                    im.load()
                    array, gray, icc = _pixels_8bit(im, icc)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"{path}: not a recognised image file (read formats: {', '.join(ALLOWED_FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"{path}: refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageReadError(
            f"{path}: unreadable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    array = _orient(array, orientation)
    if array.ndim == 2:
        array = array[:, :, None]
    info = ImageInfo(
        path=path,
        width=array.shape[1],
        height=array.shape[0],
        mode=mode,
        format=fmt,
        bit_depth=16 if sixteen else 8,
        grayscale=gray,
        icc_profile=icc,
        frames=frames,
    )
    return array, info


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, ImageInfo]:
    """Read an image as float32 RGB (3, H, W) in [0, 1] (see the module docstring: grayscale replicated,
    alpha in info.alpha, 16-bit precision kept); raise ImageReadError with one clear line otherwise."""
    array, info = _decode(Path(path), max_pixels)
    scale = 65535.0 if info.bit_depth == 16 else 255.0
    t = torch.from_numpy(array.astype(np.float32) / scale).permute(2, 0, 1).contiguous()
    color_channels = 1 if info.grayscale else 3
    info.alpha = t[color_channels : color_channels + 1].clone() if t.shape[0] > color_channels else None
    rgb = t[:1].expand(3, -1, -1).contiguous() if info.grayscale else t[:3]
    return rgb, info


def read_image_uint8(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageInfo]:
    """Read an image as uint8 RGB (H, W, 3), EXIF orientation applied, alpha dropped, 16-bit rounded to 8
    bits; ImageReadError with one clear line otherwise.

    Data loaders crop this array before converting to float (cheaper than converting a whole 2K photo)."""
    array, info = _decode(Path(path), max_pixels)
    if info.bit_depth == 16:
        array = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    color = array[:, :, :1] if info.grayscale else array[:, :, :3]
    if info.grayscale:
        color = np.repeat(color, 3, axis=2)
    return np.ascontiguousarray(color), info


def uint8_to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array)  # torch wants a writable, contiguous buffer
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255)


def _int32_samples(im: Image.Image) -> bool:
    """True for 32-bit integer pixel data (TIFF 'I;32'/'I;32S' raw modes), which 16 bits cannot hold."""
    rawmodes = _tile_rawmodes(im)
    return any(";32" in r for r in rawmodes)


def _read_16bit(path: Path) -> np.ndarray:
    """(H, W) or (H, W, C) uint16, RGB(A) order, no orientation applied (OpenCV ignores EXIF here)."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if array is None:
        raise OSError("truncated or corrupt 16-bit image data")
    if array.dtype == np.uint8:
        array = array.astype(np.uint16) * 257
    elif array.dtype != np.uint16:  # int32 / float: a cast would wrap or truncate silently
        raise ImageReadError(f"{path}: {array.dtype} samples cannot be represented in 16 bits (refused)")
    if array.ndim == 3 and array.shape[2] >= 3:
        array = array[:, :, [2, 1, 0, 3][: array.shape[2]]]  # BGR(A) -> RGB(A)
    return array


def _pixels_8bit(im: Image.Image, icc: bytes | None) -> tuple[np.ndarray, bool, bytes | None]:
    """(H, W, C) uint8 with C in {1, 2, 3, 4} (gray, gray+alpha, RGB, RGBA), grayscale flag, the ICC profile
    that still applies to those pixels."""
    mode = im.mode
    if mode in ("1", "L"):
        return np.asarray(im.convert("L")), True, icc
    if mode in ("LA", "La"):
        return np.asarray(im.convert("LA")), True, icc
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB")), False, icc
    if mode in ("RGBA", "RGBa"):
        return np.asarray(im.convert("RGBA")), False, icc
    if mode == "CMYK":
        if icc:  # convert through the file's own profile to sRGB; the pixels then are sRGB (profile dropped)
            from PIL import ImageCms

            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                rgb = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
                return np.asarray(rgb), False, None
            except (ImageCms.PyCMSError, OSError):
                pass
        return np.asarray(im.convert("RGB")), False, None
    return np.asarray(im.convert("RGB")), False, icc if mode in ("RGB", "RGBX") else None


_ORIENT_METHODS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W[, C]) array of any dtype, with exactly ImageOps.exif_transpose's
    mapping: Pillow transposes an index image, which then gathers the pixels."""
    method = _ORIENT_METHODS.get(orientation)
    if method is None:
        return array
    h, w = array.shape[:2]
    index = np.asarray(Image.fromarray(np.arange(h * w, dtype=np.int32).reshape(h, w)).transpose(method))
    flat = array.reshape(h * w, *array.shape[2:])
    return flat[index]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) uint8, rounded."""
    return image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def to_uint16(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) uint16, rounded."""
    return (
        image.detach()
        .float()
        .clamp(0, 1)
        .mul(65535)
        .round()
        .to(torch.int32)
        .permute(1, 2, 0)
        .cpu()
        .numpy()
        .astype(np.uint16)
    )


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB -> (1, H, W) luma with ITU-R 601 weights (what Pillow's convert('L') uses)."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * w).sum(0, keepdim=True)


def format_for(path: str | Path) -> str:
    ext = Path(path).suffix.lower()
    return {
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".png": "PNG",
        ".webp": "WEBP",
        ".tif": "TIFF",
        ".tiff": "TIFF",
        ".bmp": "BMP",
    }.get(ext, "PNG")


def write_image(
    path: str | Path,
    image: torch.Tensor,
    bit_depth: int = 8,
    grayscale: bool = False,
    alpha: torch.Tensor | None = None,
    icc_profile: bytes | None = None,
    quality: int = 95,
    before_replace=None,
    may_replace=None,
) -> None:
    """Write a (3, H, W) (or (1, H, W) gray) [0, 1] image. Atomic: temp file + rename, also on Ctrl-C.

    grayscale: store one channel (luma of an RGB input). alpha: (1, H, W) in [0, 1], stored where the format
    can (PNG, WebP, TIFF; an error otherwise). bit_depth 16 is honoured for PNG and TIFF, else 8 bits are
    written.
    icc_profile: embedded as it is (PNG, JPEG, WebP, TIFF; 16-bit PNG through an iCCP chunk).
    before_replace, may_replace: see safe_files.atomic_write (upscale records its outputs with the first, and
    asks its ledger with the second whether a file at `path` may be replaced, at the moment of writing).
    """
    path = Path(path)
    fmt = format_for(path)
    if alpha is not None and fmt not in _ALPHA_FORMATS:
        raise ImageWriteError(f"{path}: {fmt} cannot store transparency (use .png, .webp or .tif)")
    if grayscale and image.shape[0] == 3:
        image = to_gray(image)
    if alpha is not None:
        image = torch.cat([image, alpha.to(image)], 0)
    sixteen = bit_depth == 16 and fmt in _SIXTEEN_BIT_FORMATS
    data = _encode_16bit(image, fmt, icc_profile) if sixteen else _encode_8bit(image, fmt, icc_profile, quality)
    _write_image_bytes(path, data, before_replace, may_replace)


def _encode_8bit(image: torch.Tensor, fmt: str, icc: bytes | None, quality: int) -> bytes:
    array = to_uint8(image)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    im = Image.fromarray(array[:, :, 0] if mode == "L" else array, mode=mode)
    kwargs: dict = {}
    if icc and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        kwargs["icc_profile"] = icc
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    if fmt == "WEBP" and mode in ("L", "LA"):
        im = im.convert("RGBA" if mode == "LA" else "RGB")  # WebP has no gray mode
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _encode_16bit(image: torch.Tensor, fmt: str, icc: bytes | None) -> bytes:
    """Pillow cannot write 16-bit RGB, so OpenCV encodes; for PNG the ICC profile goes in as an iCCP chunk."""
    import cv2

    array = to_uint16(image)
    if array.shape[2] >= 3:
        array = array[:, :, [2, 1, 0, 3][: array.shape[2]]]  # RGB(A) -> BGR(A)
    elif array.shape[2] == 2:  # OpenCV has no gray+alpha: store as BGRA
        g, a = array[:, :, :1], array[:, :, 1:]
        array = np.concatenate([g, g, g, a], 2)
    else:
        array = array[:, :, 0]
    ok, encoded = cv2.imencode(".png" if fmt == "PNG" else ".tiff", array)
    if not ok:
        raise OSError("OpenCV could not encode the 16-bit image")
    data = encoded.tobytes()
    if icc and fmt == "PNG":
        data = _png_with_iccp(data, icc)
    return data


def _png_with_iccp(png: bytes, icc: bytes) -> bytes:
    """Insert an iCCP chunk right after IHDR (PNG spec: before PLTE and IDAT)."""
    body = b"icc\x00\x00" + zlib.compress(icc)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body) & 0xFFFFFFFF)
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def _write_image_bytes(path: Path, data: bytes, before_replace=None, may_replace=None) -> None:
    """safe_files.atomic_write; a failure is an ImageWriteError naming the file (a refused write stays the
    UnsafeOutputError atomic_write raises)."""
    from sanasr_cli.safe_files import atomic_write

    try:
        atomic_write(path, data, temp_mark=TEMP_MARK, before_replace=before_replace, may_replace=may_replace)
    except OSError as e:
        raise ImageWriteError(f"{path}: cannot write ({e.strerror or e})") from None


def remove_stale_temps(output: Path) -> int:
    """Delete temp files a killed run left for `output` (ours only: they carry TEMP_MARK); how many."""
    from sanasr_cli.safe_files import temp_prefix

    n = 0
    with contextlib.suppress(OSError):
        for p in output.parent.glob(f"{glob.escape(temp_prefix(output.name, TEMP_MARK))}*"):
            p.unlink(missing_ok=True)
            n += 1
    return n


def is_complete_image(path: Path, size: tuple[int, int] | None = None) -> bool:
    """True when `path` decodes completely (a truncated file does not) and, if given, has size (w, h)."""
    try:
        with _pil_decode_settings(), open_image(path) as im:
            if size is not None and im.size != tuple(size):
                return False
            im.load()
        return True
    except Exception:
        return False
