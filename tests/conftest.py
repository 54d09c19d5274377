"""Shared fixtures: tiny random models built from configs in code, tiny images made here. Never any download."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tests run offline: any accidental hub access fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _module_torch_threads(request):
    """A test module that sets TORCH_THREADS runs with that many intra-op threads. Tiny tensors on the shared
    2-core machine: one thread avoids OpenMP spin-waits (measured ~10x faster per tiny step when loaded)."""
    threads = getattr(request.module, "TORCH_THREADS", None)
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny SanaSR (random weights, seed 0) shared by read-only tests. Do not modify it in a test."""
    from sanasr_cli.models.sanasr import load_model

    return load_model("tiny", device="cpu", dtype=torch.float32, seed=0)


@pytest.fixture
def fresh_tiny_model():
    """A tiny SanaSR a test may modify (add adapters, prune, ...)."""
    from sanasr_cli.models.sanasr import load_model

    return load_model("tiny", device="cpu", dtype=torch.float32, seed=0)


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


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A folder with three small RGB PNG/JPEG images of different (odd) sizes."""
    folder = tmp_path / "lq"
    folder.mkdir()
    Image.fromarray(make_photo_like(16, 16, 1)).save(folder / "a.png")
    Image.fromarray(make_photo_like(13, 21, 2)).save(folder / "b.png")
    Image.fromarray(make_photo_like(20, 12, 3)).save(folder / "c.jpg", quality=90)
    return folder
