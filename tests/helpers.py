"""What many test files share: photo-like images and folders of them, the tiny `train` arguments, and running the
CLI in-process. Fixtures stay in conftest.py (which re-exports REPO_ROOT and make_photo_like from here)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

REPO_ROOT = Path(__file__).resolve().parents[1]
# three crops of nano's held-out photos, Real-ESRGAN-degraded (seed 0): lq/ and hq/ (benchmarks/nano_quality.py)
NANO_HELDOUT_PAIRS = REPO_ROOT / "tests" / "data" / "nano_heldout"
# nano v1's three CI crops: the v1 experiments (experiments/nano_ablations.py, nano_headroom.py) were measured on them
NANO_V1_PAIRS = REPO_ROOT / "tests" / "data" / "nano_v1_heldout"

# `sanasr train` on the tiny preset, small and offline: 16 px crops, rank-4 LoRA, a random LPIPS backbone, no
# data workers, fp32. Add the run's own flags (--hq, -o, --max-steps, ...).
TINY_TRAIN = [
    "--model", "tiny", "--crop", "16", "--batch-size", "2", "--lora-rank", "4", "--lora-alpha", "4",
    "--perceptual-backbone", "random", "--num-workers", "0", "--precision", "fp32",
]  # fmt: skip

runner = CliRunner()
NETGUARD_DIR = REPO_ROOT / "tests" / "netguard"  # the network guard's sitecustomize.py (tests/conftest.py)


def child_env(**changes: str) -> dict[str, str]:
    """The environment of a Python process a test starts: this checkout first on PYTHONPATH, after the network
    guard's folder (so the child refuses, and records, any connection beyond loopback), plus `changes`."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(NETGUARD_DIR), str(REPO_ROOT)]), **changes}


def assert_tiles_like_the_whole_image(model, min_psnr: float = 30.0) -> None:
    """Upscale a 29x31 crop of a held-out LQ photo whole and tiled (48 and 64 px, odd latent sides and tile edges):
    the tiled outputs have the whole one's shape and agree with it above `min_psnr` dB."""
    import torch

    from sanasr_cli.data.io import read_image
    from sanasr_cli.pipeline.upscale import upscale_tensor

    lq = read_image(NANO_HELDOUT_PAIRS / "lq" / "skimage-coffee.png")[0][:, :29, :31]
    whole = upscale_tensor(model, lq, "clean", tile="none", color_fix="none")
    for tile in (48, 64):
        tiled = upscale_tensor(model, lq, "clean", tile=tile, color_fix="none")
        assert tiled.shape == whole.shape == (3, 116, 124)
        assert float(10 * torch.log10(1 / torch.mean((tiled - whole) ** 2))) > min_psnr, tile


def assert_images_close(got: Path, want: Path, max_levels: int, mean_levels: float) -> None:
    """Two image files hold the same picture up to float rounding: the same size, no pixel more than `max_levels`
    8-bit levels apart, and the mean difference below `mean_levels` (far below one level). A kernel, thread count
    or CPU that rounds one ulp otherwise flips a few pixels by a level; a real change moves most of them."""
    a = np.asarray(Image.open(got).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(want).convert("RGB"), dtype=np.int16)
    assert a.shape == b.shape, f"{got.name}: {a.shape} != reference {b.shape}"
    diff = np.abs(a - b)
    assert diff.max() <= max_levels and diff.mean() < mean_levels, (
        f"{got.name}: max {diff.max()} levels (limit {max_levels}), mean {diff.mean():.4f} (limit {mean_levels})"
    )


def experiment_module(name: str):
    """A script of experiments/ as a module (they import each other and benchmarks/nano_quality.py by bare name, so
    both folders go on the path): the tests run the scripts' own code."""
    for folder in (str(REPO_ROOT / "benchmarks"), str(REPO_ROOT / "experiments")):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    return importlib.import_module(name)


def make_photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, textured uint8 RGB image (gradients + sinusoids + mild noise), closer to a photo than noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        f1, f2 = rng.uniform(0.02, 0.2, size=2)
        ph = rng.uniform(0, 6.28)
        ch = 0.5 + 0.25 * np.sin(xx * f1 + ph) * np.cos(yy * f2) + 0.2 * (xx / max(width, 1) - 0.5)
        channels.append(ch)
    img = np.stack(channels, -1) + rng.normal(0, 0.02, (height, width, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def save_photo(path: Path, h: int = 8, w: int = 8, seed: int = 0, fmt: str | None = None) -> Path:
    """A photo-like h x w image saved at `path` (parent folders made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_photo_like(h, w, seed)).save(path, format=fmt)
    return path


def photo_folder(folder: Path, n: int, size: tuple[int, int] = (40, 48), seed: int = 0, prefix: str = "img") -> Path:
    """`folder` with n photo-like PNGs <prefix>0.png ... of size (h, w), seeds seed, seed + 1, ..."""
    for i in range(n):
        save_photo(Path(folder) / f"{prefix}{i}.png", size[0], size[1], seed + i)
    return Path(folder)


def pair_folder(folder: Path, n: int = 2) -> Path:
    """folder/hq (32 px photo-like images) and folder/lq (their 8 px bicubic downscales), n pairs: what prune's
    --validate and eval read."""
    from PIL import Image

    for sub in ("lq", "hq"):
        (folder / sub).mkdir(parents=True)
    for i in range(n):
        hq = make_photo_like(32, 32, seed=i)
        Image.fromarray(hq).save(folder / "hq" / f"{i}.png")
        Image.fromarray(hq).resize((8, 8), Image.BICUBIC).save(folder / "lq" / f"{i}.png")
    return folder


def invoke(*args):
    """`sanasr ARGS` in-process (arguments as strings); the click Result."""
    from sanasr_cli.cli import app

    return runner.invoke(app, [str(a) for a in args])


def run(*args):
    """`invoke`, asserting nothing escaped as a traceback (only exits)."""
    result = invoke(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def one_error_line(result) -> str:
    """The one `error:` line of a result (asserting there is exactly one)."""
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def snapshot(root) -> dict:
    """{relative path: bytes (or link target)} of everything under root, links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                out[rel] = open(p, "rb").read()
    return out


_LOAD_IN_A_FRESH_PROCESS = """
import os, resource, sys, time
from diffusers import SanaTransformer2DModel  # noqa: F401 - imported before the baseline, as are:
try:
    import onnx, onnxruntime  # noqa: F401 - the ONNX backend's libraries, where installed
except ImportError:
    pass
from sanasr_cli.errors import ModelDirError
from sanasr_cli.models.sanasr import load_model
for i, folder in enumerate(sys.argv[1:]):
    pid = os.fork()  # each folder in a child of its own: nothing an earlier load did is in it
    if pid == 0:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # a fork's own peak starts at its RSS
        start = time.perf_counter()
        try:
            load_model(folder)
            outcome = "LOADED"
        except ModelDirError as e:
            outcome = "REFUSED " + str(e).replace(chr(10), " ")
        seconds = time.perf_counter() - start
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(f"{i} {outcome}", f"{i} SECONDS {seconds}", f"{i} GROWN_MB {grown}", sep=chr(10), flush=True)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(f"{i} EXIT {os.waitstatus_to_exitcode(status)}", flush=True)
"""


def load_each_in_a_fresh_process(model_dirs: list[Path]) -> list[tuple[str, float, float]]:
    """For each folder, (first line of the outcome, seconds, peak RSS growth in MB) of load_model(folder) in a
    process of its own: one new interpreter imports the libraries once and forks a child per folder, whose peak
    (ru_maxrss, in KiB on Linux) starts at its resident size, not at the test process's or an earlier load's."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_A_FRESH_PROCESS, *map(str, model_dirs)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = []
    for i in range(len(model_dirs)):
        lines = [ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if ln.split(" ", 1)[0] == str(i)]
        assert len(lines) == 4 and lines[3] == "EXIT 0", proc.stdout + proc.stderr
        out.append((lines[0], float(lines[1].split()[1]), float(lines[2].split()[1])))
    return out


def png_bomb(path: Path, width: int, height: int, orientation: int = 6) -> Path:
    """A gray PNG of width x height zeros (a few hundred KB for 20000 x 20000: 400 MB decoded), its EXIF
    orientation in an eXIf chunk after the image data, where Pillow's getexif() decodes every pixel to find it.
    Written row by row: the test never holds the image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    exif = Image.Exif()
    exif[0x0112] = orientation
    tiff = exif.tobytes()
    tiff = tiff[6:] if tiff.startswith(b"Exif\x00\x00") else tiff
    packer, row = zlib.compressobj(9), b"\x00" * (width + 1)  # filter byte 0 + the row
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", body) + chunk(b"eXIf", tiff) + chunk(b"IEND", b""))
    return Path(path)
