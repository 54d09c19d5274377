"""DAPE (SeeSR's degradation-aware RAM), the paper's prompt extractor Pi, through the `ram` package.

Not re-implemented here: the model is SeeSR's `ram.models.ram_lora.ram` (the RAM Swin-L tagger with DAPE's
LoRA weights), used as SeeSR and OSEDiff use it: LQ upsampled x4, resized to 384 x 384, ImageNet-normalised,
`generate_tag`. `recognize-anything` is not on PyPI and its upstream `ram` lacks `ram_lora`, so the package is
SeeSR's copy, put on the Python path. Two weight files are expected, in a folder given by `--tagger-weights`
(or beside the DAPE file when a file is given): `ram_swin_large_14m.pth` (RAM) and `DAPE.pth` (DAPE).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
from pathlib import Path

import torch

from sanasr_cli.errors import TaggerUnavailableError
from sanasr_cli.prompts.base import TAGGER_UPSAMPLE, tagger_input

RAM_WEIGHTS = "ram_swin_large_14m.pth"
DAPE_WEIGHTS = "DAPE.pth"
RAM_MODULE = "ram.models.ram_lora"
IMAGE_SIZE = 384
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INSTALL_HINT = (
    "install SeeSR's `ram` package: `git clone https://github.com/cswry/SeeSR && "
    "export PYTHONPATH=$PWD/SeeSR:$PYTHONPATH && pip install timm fairscale` "
    "(recognize-anything's own `ram` has no ram_lora, which DAPE needs)"
)
WEIGHTS_HINT = (
    f"pass --tagger-weights DIR with {RAM_WEIGHTS} (RAM Swin-L, from recognize-anything's release) and "
    f"{DAPE_WEIGHTS} (from SeeSR's release), or --tagger-weights PATH/{DAPE_WEIGHTS} "
    f"with {RAM_WEIGHTS} beside it"
)


def weight_files(weights: str | Path | None) -> tuple[Path, Path] | None:
    """(RAM file, DAPE file) that `--tagger-weights` points at: a folder holding both, or the DAPE
    file."""
    if weights is None:
        return None
    p = Path(weights).expanduser()
    if p.is_dir():
        return p / RAM_WEIGHTS, p / DAPE_WEIGHTS
    return p.parent / RAM_WEIGHTS, p


def ram_available() -> bool:
    try:
        return importlib.util.find_spec(RAM_MODULE) is not None
    except (ImportError, ValueError):  # `ram` itself missing, or a foreign module named ram
        return False


def missing_requirements(weights: str | Path | None, have_package: bool | None = None) -> list[str]:
    """What the dape tagger lacks, one item each (empty: ready). `have_package` defaults to a real import
    check."""
    have_package = ram_available() if have_package is None else have_package
    missing = []
    if not have_package:
        missing.append(f"the `{RAM_MODULE}` module is not importable; {INSTALL_HINT}")
    files = weight_files(weights)
    if files is None:
        missing.append(f"no DAPE weights given; {WEIGHTS_HINT}")
    else:
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            missing.append(f"weights not found: {', '.join(absent)}; {WEIGHTS_HINT}")
    return missing


def check_requirements(weights: str | Path | None, have_package: bool | None = None) -> None:
    """Raise one TaggerUnavailableError naming everything missing (package and/or weights)."""
    missing = missing_requirements(weights, have_package)
    if missing:
        raise TaggerUnavailableError("the dape tagger cannot run: " + "; and ".join(missing))


def dape_input(image: torch.Tensor) -> torch.Tensor:
    """(3, h, w) LQ in [0, 1] -> (1, 3, 384, 384) float32, ImageNet-normalised: x4 bicubic, then resized to
    RAM's input size, as SeeSR's `ram_transforms` after OSEDiff's x4 upsampling."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (tagger_input(image, IMAGE_SIZE) - mean) / std


def parse_ram_tags(text: str) -> list[str]:
    """RAM's tag string -> tags in its order. SeeSR joins tags with ", ", recognize-anything with " | "."""
    return [t.strip() for t in text.replace("|", ",").split(",") if t.strip()]


@contextlib.contextmanager
def _weights_only_torch_load():
    """RAM's loaders call torch.load without weights_only; force it (no pickle code from weight files) on
    every torch version, not only on torch >= 2.6 where it is the default."""
    original = torch.load

    def safe_load(*args, **kwargs):
        kwargs["weights_only"] = True
        kwargs.setdefault("map_location", "cpu")
        return original(*args, **kwargs)

    torch.load = safe_load
    try:
        yield
    finally:
        torch.load = original


class DapeTagger:
    """Pi(x_L) by DAPE. Requirements are checked when the tagger is built, the model loads on the first
    image that is not in the tag cache."""

    name = "dape"

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        check_requirements(weights)
        self.ram_file, self.dape_file = weight_files(weights)
        self.device = torch.device(device)
        self.model = None

    @property
    def identity(self) -> str:
        stats = [
            (f.resolve().as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in (self.ram_file, self.dape_file)
        ]
        digest = hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
        return f"dape|weights={digest}|size={IMAGE_SIZE}|upsample={TAGGER_UPSAMPLE}"

    def load(self) -> None:
        if self.model is not None:
            return
        from ram.models.ram_lora import ram  # SeeSR's package (see module docstring)

        with _weights_only_torch_load():
            model = ram(
                pretrained=str(self.ram_file),
                pretrained_condition=str(self.dape_file),
                image_size=IMAGE_SIZE,
                vit="swin_l",
            )
        self.model = model.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def tags(self, image: torch.Tensor | None, path: Path | None) -> list[str]:
        if image is None:
            return []
        self.load()
        english = self.model.generate_tag(dape_input(image).to(self.device))[0][0]  # (english, chinese) lists
        return parse_ram_tags(english)

    def release(self) -> None:
        if self.model is not None and self.device.type != "cpu":
            self.model.to("cpu")
            self.device = torch.device("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
