"""Image-quality metrics through pyiqa, under a stated protocol, with the exact variant of each named.

What is computed, so two users get the same numbers for the same images:
- Images are read by `sanasr_cli.data.io.read_image` (8-bit files -> float32 RGB in [0, 1], EXIF orientation
  applied). Every non-RGB file is converted the same way for every method, with PIL `convert("RGB")`:
  grayscale is replicated to R = G = B, palette images are expanded, and an alpha channel is dropped (colour
  values kept, not composited on a background). Each converted file is listed in the report.
- Protocol `full`: the whole images; restored and reference sizes must agree. Protocol `patch`: the 256x256
  centre crop of both (top = (H - 256) // 2, left = (W - 256) // 2, so for odd margins the extra row/column is
  left at the bottom/right); images smaller than 256 on a side are refused.
- Each metric is `pyiqa.create_metric(<pyiqa name>, **options)` as listed in METRICS (PSNR and SSIM on the Y
  channel of YCbCr, ITU-R BT.601), except NIQE and BRISQUE: they run offline with parameters shipped in sanasr
  (`nr_metrics.py`; their variant says which). Scores are per image; the mean is the plain mean over images.
- A metric whose weights are neither in the local cache nor downloadable is reported with one message
  naming the file and the folder to put it in; the other metrics still run.
- A metric with a smallest image size (NIQE: 192 px, BRISQUE: 32 px a side, after the protocol's crop) refuses
  smaller images before any work, listing them in one error.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sanasr_cli.errors import SanaSRError
from sanasr_cli.evaluation.nr_metrics import MIN_SIZE as NR_MIN_SIZE
from sanasr_cli.evaluation.pairing import ImagePair

PATCH_SIZE = 256
PROTOCOLS = ("full", "patch")
CONVERSION_RULE = (
    "non-RGB files converted with PIL Image.convert('RGB'): grayscale replicated to R=G=B, palette expanded, "
    "alpha dropped (not composited)"
)
_YCBCR = "Y of YCbCr (ITU-R BT.601: Y = 16 + 65.481 R + 128.553 G + 24.966 B for RGB in [0, 1])"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: our name, the pyiqa metric it is, and the options passed to pyiqa.create_metric."""

    name: str
    pyiqa_name: str | None
    options: dict
    mode: str  # "FR" (needs the reference) or "NR" (restored image alone)
    lower_better: bool
    description: str
    needs_weights: bool = True
    # metrics sanasr computes itself with parameters it ships (nr_metrics.py): what is computed, with which
    # parameters; `pyiqa_name` is then the pyiqa metric it equals, or None where it equals none
    shipped: str | None = None
    min_size: int = 0  # the smallest side, in px after the protocol's crop, the metric accepts
    # below this side one image's score depends on the crop (benchmarks/results/nr_metric_sizes.md); eval notes it
    stable_size: int = 0

    @property
    def variant(self) -> str:
        """The exact call, e.g. "pyiqa.create_metric('psnry', color_space='ycbcr')"."""
        if self.shipped is not None:
            return self.shipped
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"pyiqa.create_metric('{self.pyiqa_name}'{opts})"

    def to_dict(self) -> dict:
        return {
            "pyiqa_name": self.pyiqa_name,
            "options": dict(self.options),
            "variant": self.variant,
            "mode": self.mode,
            "lower_better": self.lower_better,
            "description": self.description,
            "min_size": self.min_size,
            "stable_size": self.stable_size,
        }


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in [
        MetricSpec(
            "psnr",
            "psnry",
            {"color_space": "ycbcr"},
            "FR",
            False,
            f"PSNR (dB) on {_YCBCR}, float Y in [0, 1], data range 1, no border crop",
            needs_weights=False,
        ),
        MetricSpec(
            "ssim",
            "ssim",
            {"color_space": "ycbcr", "downsample": False},
            "FR",
            False,
            f"SSIM on {_YCBCR} rounded to integers 0..255, float64, 11x11 Gaussian window (sigma 1.5), "
            "'valid' filtering, no downsampling, no border crop",
            needs_weights=False,
        ),
        MetricSpec("lpips", "lpips", {}, "FR", True, "LPIPS v0.1, AlexNet features, RGB"),
        MetricSpec("lpips-vgg", "lpips-vgg", {}, "FR", True, "LPIPS v0.1, VGG-16 features, RGB"),
        MetricSpec("dists", "dists", {}, "FR", True, "DISTS (VGG-16), RGB"),
        MetricSpec(
            "niqe",
            "niqe",
            {},
            "NR",
            True,
            "NIQE, pyiqa's PyTorch port (Y of YIQ rounded to 0..255, 96x96 blocks, 2 scales, the blocks that do not "
            "fit left out), as pyiqa's 'niqe' with the parameters it downloads; within 0.2% of BasicSR's "
            "MATLAB-checked NIQE. Needs >= 192x192 px (2x2 blocks); one image's score is noisy under 384x384 "
            "(16 blocks): docs/eval-bench.md",
            needs_weights=False,
            shipped="pyiqa.archs.niqe_arch.calculate_niqe(test_y_channel=True, color_space='yiq') with the NIQE MATLAB "
            "release's pristine model (BasicSR 1.4.2's copy; shipped: nr_params/niqe_pristine.json)",
            min_size=NR_MIN_SIZE["niqe"],
            stable_size=384,
        ),
        MetricSpec(
            "brisque",
            None,
            {},
            "NR",
            True,
            "BRISQUE as the brisque 0.2.0 package computes it (grey = skimage rgb2gray, MSCN, 36 AGGD features on 2 "
            "scales, its SVR), not pyiqa's 'brisque' (another SVR on other features: other numbers). Needs >= 32x32 "
            "px; one image's score is noisy under 512x512: docs/eval-bench.md",
            needs_weights=False,
            shipped="brisque 0.2.0's BRISQUE: its features, min/max scaling and libsvm epsilon-SVR (RBF, gamma 0.05, "
            "770 support vectors; shipped: nr_params/brisque_svr.json)",
            min_size=NR_MIN_SIZE["brisque"],
            stable_size=512,
        ),
        MetricSpec("musiq", "musiq", {}, "NR", False, "MUSIQ trained on KonIQ-10k"),
        MetricSpec("maniqa", "maniqa", {}, "NR", False, "MANIQA trained on KonIQ-10k (pyiqa default)"),
        MetricSpec("clipiqa", "clipiqa", {}, "NR", False, "CLIP-IQA (ResNet-50 CLIP, antonym prompts)"),
    ]
}
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "dists", "niqe", "musiq", "maniqa", "clipiqa")


class UnknownMetricError(SanaSRError):
    pass


class ProtocolError(SanaSRError):
    """Images that cannot be compared under the chosen protocol (sizes differ, too small for the patch)."""


def parse_metrics(names: str | list[str] | tuple[str, ...], need_reference: bool = True) -> list[MetricSpec]:
    """'psnr,ssim' or a list -> MetricSpecs, in the given order, without duplicates."""
    items = [n.strip().lower() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise UnknownMetricError(f"no metric given; known: {', '.join(METRICS)}")
    unknown = [n for n in items if n not in METRICS]
    if unknown:
        raise UnknownMetricError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    specs = [METRICS[n] for n in dict.fromkeys(items)]
    if not need_reference:
        fr = [s.name for s in specs if s.mode == "FR"]
        if fr:
            raise UnknownMetricError(
                f"{', '.join(fr)} need reference images (--hr); without them use no-reference metrics: "
                f"{', '.join(n for n, s in METRICS.items() if s.mode == 'NR')}"
            )
    return specs


# ---------------------------------------------------------------- protocol


def center_crop(image: torch.Tensor, size: int = PATCH_SIZE) -> torch.Tensor:
    """The size x size centre crop of (..., H, W): top = (H - size) // 2, left = (W - size) // 2."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise ProtocolError(f"image of {w}x{h} is smaller than the {size}x{size} patch")
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top : top + size, left : left + size]


def apply_protocol(image: torch.Tensor, protocol: str) -> torch.Tensor:
    if protocol == "full":
        return image
    if protocol == "patch":
        return center_crop(image, PATCH_SIZE)
    raise ValueError(f"unknown protocol '{protocol}' (use {' or '.join(PROTOCOLS)})")


def oriented_size(path: Path) -> tuple[int, int]:
    """(width, height) as read_image will return it (EXIF rotation by 90/270 degrees swaps them)."""
    from sanasr_cli.data.io import open_image

    with open_image(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_sizes(pairs: list[ImagePair], protocol: str) -> None:
    """Raise one ProtocolError listing every pair that cannot be compared under `protocol`."""
    problems = []
    for p in pairs:
        try:
            sr_size = oriented_size(p.sr)
            hr_size = oriented_size(p.hr) if p.hr is not None else None
        except Exception:  # unreadable files are reported per image later, with read_image's message
            continue
        if protocol == "full" and hr_size is not None and sr_size != hr_size:
            problems.append(f"{p.sr.name} {sr_size[0]}x{sr_size[1]} vs {p.hr.name} {hr_size[0]}x{hr_size[1]}")
        if protocol == "patch":
            for path, (w, h) in ((p.sr, sr_size), (p.hr, hr_size)):
                if path is not None and (w < PATCH_SIZE or h < PATCH_SIZE):
                    problems.append(f"{path.name} is {w}x{h}, smaller than the {PATCH_SIZE}x{PATCH_SIZE} patch")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        hint = " (use --protocol patch to compare centre crops)" if protocol == "full" else ""
        raise ProtocolError(f"{len(problems)} image(s) cannot be compared under --protocol {protocol}: {shown}{hint}")


def check_metric_sizes(pairs: list[ImagePair], metrics: list[MetricSpec], protocol: str) -> None:
    """Raise one ProtocolError naming each metric that an image (as the protocol crops it) is too small for."""
    problems = []
    for m in (m for m in metrics if m.min_size):
        small = []
        for p in pairs:
            for path in (p.sr, p.hr) if m.mode == "FR" else (p.sr,):
                try:
                    w, h = (PATCH_SIZE, PATCH_SIZE) if protocol == "patch" else oriented_size(path)
                except Exception:  # unreadable: reported per image later
                    continue
                if min(w, h) < m.min_size:
                    small.append(f"{path.name} {w}x{h}")
        if small:
            shown = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
            problems.append(
                f"{m.name} needs images of at least {m.min_size}x{m.min_size} px, {len(small)} are smaller ({shown})"
            )
    if problems:
        raise ProtocolError("; ".join(problems) + " - score larger images or leave the metric out of --metrics")


# ---------------------------------------------------------------- building metrics


class MetricUnavailable(SanaSRError):
    """A metric that could not be built (weights missing and not downloadable, or a missing package)."""


@contextlib.contextmanager
def _recording_downloads(attempts: list[tuple[str, str]]):
    """Record (url, destination) of every download pyiqa or torchvision starts.

    pyiqa and torchvision fetch weights through torch.hub.download_url_to_file; the URLError they raise
    offline does not say which file, so we note each attempt to name the file and its cache folder.
    """
    import pyiqa.utils.download_util as pyiqa_download
    import torch.hub

    original_hub, original_pyiqa = torch.hub.download_url_to_file, pyiqa_download.download_url_to_file

    def recording(url, dst, *args, **kwargs):
        attempts.append((str(url), str(dst)))
        return original_hub(url, dst, *args, **kwargs)

    # CLIP-based metrics (clipiqa) fetch the OpenAI CLIP weights with urllib in pyiqa's own clip loader.
    try:
        import pyiqa.archs.clip_model as pyiqa_clip
    except ImportError:
        pyiqa_clip = None
    original_clip = getattr(pyiqa_clip, "_download", None)

    def recording_clip(url, root, *args, **kwargs):
        attempts.append((str(url), str(Path(root) / Path(str(url)).name)))
        return original_clip(url, root, *args, **kwargs)

    torch.hub.download_url_to_file = recording
    pyiqa_download.download_url_to_file = recording
    if original_clip is not None:
        pyiqa_clip._download = recording_clip
    try:
        yield
    finally:
        torch.hub.download_url_to_file = original_hub
        pyiqa_download.download_url_to_file = original_pyiqa
        if original_clip is not None:
            pyiqa_clip._download = original_clip


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def missing_weights_message(metric: str, url: str, destination: str, cause: str) -> str:
    dst = Path(destination)
    return (
        f"metric '{metric}': weights file {dst.name} is not in {dst.parent} and could not be downloaded "
        f"from {url} ({cause}). Put {dst.name} into {dst.parent}/ (fetch it from that URL where there is "
        f"network) and run again."
    )


def build_metric(spec: MetricSpec, device: torch.device | str = "cpu"):
    """pyiqa.create_metric for `spec` (sanasr's own module for a shipped metric), or MetricUnavailable with one
    clear message."""
    if spec.shipped is not None:
        return _build_shipped(spec, device)
    attempts: list[tuple[str, str]] = []
    try:
        import pyiqa

        # pyiqa prints download/loading notes to stdout; keep stdout clean for our own output.
        with _recording_downloads(attempts), contextlib.redirect_stdout(io.StringIO()):
            return pyiqa.create_metric(spec.pyiqa_name, device=torch.device(device), **spec.options)
    except ImportError as e:
        raise MetricUnavailable(
            f"metric '{spec.name}' cannot be built: a package it needs is missing ({_first_line(e)})"
            + (
                " - the 'clip' package pyiqa uses needs pkg_resources: pip install 'setuptools<81'"
                if "pkg_resources" in str(e)
                else ""
            )
        ) from None
    except Exception as e:  # any failure of one metric must not stop the others
        if attempts and isinstance(e, OSError):
            url, dst = attempts[-1]
            raise MetricUnavailable(missing_weights_message(spec.name, url, dst, _first_line(e))) from None
        if _is_hub_miss(e):
            from huggingface_hub.constants import HF_HUB_CACHE

            raise MetricUnavailable(
                f"metric '{spec.name}': a backbone file from the Hugging Face hub is not in the cache "
                f"{HF_HUB_CACHE} and could not be downloaded ({_first_line(e)}). Run once with network "
                f"access (or copy that cache folder from a machine that has it) and run again."
            ) from None
        raise MetricUnavailable(f"metric '{spec.name}' could not be built: {_first_line(e)}") from None


def _build_shipped(spec: MetricSpec, device: torch.device | str):
    from sanasr_cli.evaluation.nr_metrics import BUILDERS

    try:
        return BUILDERS[spec.name]().to(torch.device(device))
    except ImportError as e:
        raise MetricUnavailable(
            f"metric '{spec.name}' cannot be built: a package it needs is missing ({_first_line(e)})"
        ) from None
    except (OSError, ValueError, KeyError) as e:  # a damaged install: the shipped parameter file is missing or bad
        raise MetricUnavailable(
            f"metric '{spec.name}': its shipped parameters could not be read ({_first_line(e)}); reinstall sanasr"
        ) from None


def _is_hub_miss(e: BaseException) -> bool:
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - old huggingface_hub
        return False
    return isinstance(e, LocalEntryNotFoundError)


# ---------------------------------------------------------------- evaluation


@dataclass
class ImageScores:
    key: str
    sr: str
    hr: str | None
    values: dict[str, float] = field(default_factory=dict)
    sr_size: tuple[int, int] | None = None  # (width, height) before the protocol crop
    hr_size: tuple[int, int] | None = None
    converted: dict[str, str] = field(default_factory=dict)  # file -> original PIL mode, when not RGB
    error: str | None = None


@dataclass
class EvalResult:
    protocol: str
    metrics: list[MetricSpec]
    images: list[ImageScores]
    unavailable: dict[str, str] = field(default_factory=dict)  # metric name -> message

    @property
    def computed(self) -> list[MetricSpec]:
        return [m for m in self.metrics if m.name not in self.unavailable]

    @property
    def failed_images(self) -> list[ImageScores]:
        return [s for s in self.images if s.error]

    @property
    def means(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for m in self.computed:
            vals = [s.values[m.name] for s in self.images if m.name in s.values]
            out[m.name] = sum(vals) / len(vals) if vals else None
        return out

    @property
    def ok(self) -> bool:
        return not self.unavailable and not self.failed_images

    @property
    def notes(self) -> list[str]:
        """One line per computed metric that scored images under its stable size (as the protocol cropped them)."""
        out = []
        for m in (m for m in self.computed if m.stable_size):
            sides = [PATCH_SIZE if self.protocol == "patch" else min(s.sr_size) for s in self.images if s.sr_size]
            small = sum(side < m.stable_size for side in sides)
            if small:
                out.append(
                    f"{m.name}: {small} of {len(sides)} image(s) scored under {m.stable_size}x{m.stable_size} px, "
                    "where one image's score moves with the crop; compare medians over many images "
                    "(docs/eval-bench.md)"
                )
        return out


def _read(path: Path, converted: dict[str, str]) -> tuple[torch.Tensor, tuple[int, int]]:
    from sanasr_cli.data.io import read_image

    image, info = read_image(path)
    if info.mode != "RGB":
        converted[str(path)] = info.mode
    return image, (info.width, info.height)


@torch.no_grad()
def evaluate_pairs(
    pairs: list[ImagePair],
    metrics: list[MetricSpec],
    protocol: str = "full",
    device: torch.device | str = "cpu",
    on_image: Callable[[ImageScores], None] | None = None,
    built: dict | None = None,
) -> EvalResult:
    """Score every pair with every metric under `protocol`.

    `built` (optional) maps metric name -> an already built pyiqa metric (reused across calls, e.g. when
    ranking checkpoints). Raises ProtocolError before any work when sizes do not fit the protocol.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}' (use {' or '.join(PROTOCOLS)})")
    if any(m.mode == "FR" for m in metrics) and any(p.hr is None for p in pairs):
        raise UnknownMetricError("full-reference metrics need reference images (--hr)")
    check_sizes(pairs, protocol)
    check_metric_sizes(pairs, metrics, protocol)
    result = EvalResult(protocol=protocol, metrics=list(metrics), images=[])
    nets = {} if built is None else built
    for m in metrics:
        if m.name in nets:
            continue
        try:
            nets[m.name] = build_metric(m, device)
        except MetricUnavailable as e:
            result.unavailable[m.name] = str(e)
    for pair in pairs:
        scores = ImageScores(key=pair.key, sr=str(pair.sr), hr=str(pair.hr) if pair.hr else None)
        try:
            sr, scores.sr_size = _read(pair.sr, scores.converted)
            sr = apply_protocol(sr, protocol)[None].to(device)
            hr = None
            if pair.hr is not None:
                hr, scores.hr_size = _read(pair.hr, scores.converted)
                hr = apply_protocol(hr, protocol)[None].to(device)
            for m in result.computed:
                net = nets[m.name]
                value = net(sr, hr) if m.mode == "FR" else net(sr)
                scores.values[m.name] = float(torch.as_tensor(value).reshape(-1)[0])
        except SanaSRError as e:
            scores.error = str(e)
        except (RuntimeError, ValueError, AssertionError) as e:  # one bad image must not stop the run
            scores.error = f"{pair.sr.name}: {_first_line(e)}"
        result.images.append(scores)
        if on_image:
            on_image(scores)
    return result


def finite(x: float | None) -> float | None:
    """JSON-safe number: None for NaN/inf (PSNR of identical images is capped by pyiqa's eps, not inf)."""
    return None if x is None or not math.isfinite(x) else x
