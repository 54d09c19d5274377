"""The Real-ESRGAN second-order degradation pipeline: HQ batch -> synthetic LQ batch, on any device.

Source of the model and of every default in `DegradationConfig`: Real-ESRGAN (Wang et al., ICCV-W 2021,
arXiv:2107.10833), file `options/train_realesrgan_x4plus.yml` of github.com/xinntao/Real-ESRGAN (the x4plus
training configuration), the order of operations in `realesrgan/models/realesrgan_model.py::feed_data`, the
kernel draws in `realesrgan/data/realesrgan_dataset.py`, and the kernel / noise definitions in
`basicsr/data/degradations.py` (github.com/XPixelGroup/BasicSR). Written anew here: basicsr no longer imports
with current torchvision.

Pipeline (each arrow draws its parameters from the caller's generator):

    HQ (H x W)
      stage 1: blur (iso / aniso Gaussian, generalized Gaussian, plateau, or sinc; size 7..21)
               -> resize (up / down / keep; area, bilinear or bicubic) -> Gaussian or Poisson noise (colour or
               gray) -> JPEG
      stage 2 (prob second_order_prob): blur (prob second_blur_prob) -> resize to (H/s) * r -> noise
      final, in random order: [resize to H/s + sinc filter (prob final_sinc_prob)] then JPEG, or the reverse
      clamp to [0, 1] and quantise to 8 bits  -> LQ (H/s x W/s)

Deliberate differences from the reference, each for a stated reason:
- Every draw is per sample. Real-ESRGAN draws the resize factor, resize mode, second-blur coin and final order
  once per batch and restores diversity with a 180-image queue; SANA-SR trains with batch 4 and no queue, so
  per-sample draws keep the distribution of a single pair identical to the reference while a batch is diverse.
- JPEG is a torch implementation of the baseline codec (`jpeg_compress`, the default `jpeg_backend="torch"`),
  like basicsr's DiffJPEG that Real-ESRGAN itself uses on the GPU: it runs on CPU and CUDA tensors alike, in a
  batch, with the fractional qualities the reference draws, and never leaves the device. `jpeg_backend="pil"`
  uses the real libjpeg through Pillow (CPU round trip; quality rounded to an integer).
- Real-ESRGAN x4plus degrades the unsharp-masked GT and trains against sharpened targets (`l1_gt_usm`); the
  SANA-SR paper mentions no sharpening, so neither the input nor the target is sharpened here.
- The HQ crop is degraded as it is, at the training size (512 in the paper). Real-ESRGAN degrades a 400 px
  crop and cuts its 256 px pair out of the result, which keeps filter borders out of the pair; here borders
  use reflect padding.
- Kernels are not zero-padded to 21 (a size-k kernel is applied as it is, with reflect padding, replicate
  where the image is smaller than the padding), so small crops (e.g. 64 x 64 in tests) work.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
JPEG_BACKENDS = ("torch", "pil")


def _odd_sizes() -> tuple[int, ...]:
    return tuple(range(7, 22, 2))  # 7, 9, ..., 21 (`kernel_range` in realesrgan_dataset.py)


@dataclass
class DegradationConfig:
    """Every parameter of the Real-ESRGAN x4plus synthesis, named as in train_realesrgan_x4plus.yml.

    Defaults are the published values (see the module docstring for the sources). Noise sigmas are on the
    0..255 scale; JPEG qualities on 0..100; resize factors relative to the current size (stage 1) or to the
    LQ size (stage 2); angles in radians. `second_order_prob` is the skip probability of the whole second
    stage: x4plus always runs it (1.0); several later diffusion-SR training setups use 0.5.
    """

    # --- first degradation: blur
    blur_kernel_size: tuple[int, ...] = field(default_factory=_odd_sizes)
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    # --- first degradation: resize, noise, JPEG
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    # --- second degradation
    second_order_prob: float = 1.0
    second_blur_prob: float = 0.8
    blur_kernel_size2: tuple[int, ...] = field(default_factory=_odd_sizes)
    kernel_list2: tuple[str, ...] = KERNEL_TYPES
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, float] = (30.0, 95.0)  # used by the final JPEG
    # --- final sinc filter (with the resize to the LQ size), in random order with the final JPEG
    final_sinc_prob: float = 0.8
    final_sinc_kernel_size: tuple[int, ...] = field(default_factory=_odd_sizes)
    final_sinc_cutoff: tuple[float, float] = (math.pi / 3, math.pi)
    final_order_prob: float = 0.5  # P([resize + sinc] before JPEG)
    # --- constants of the reference code, exposed so nothing is hidden
    rotation_range: tuple[float, float] = (-math.pi, math.pi)
    sinc_cutoff_small: tuple[float, float] = (math.pi / 3, math.pi)  # stage sinc, kernel size < 13
    sinc_cutoff_large: tuple[float, float] = (math.pi / 5, math.pi)  # stage sinc, kernel size >= 13
    resize_modes: tuple[str, ...] = RESIZE_MODES
    # --- implementation choice (not a Real-ESRGAN parameter)
    jpeg_backend: str = "torch"

    def __post_init__(self):
        for name in ("kernel_list", "kernel_list2"):
            bad = [k for k in getattr(self, name) if k not in KERNEL_TYPES]
            if bad:
                raise ValueError(f"{name}: unknown kernel type(s) {bad}; known: {', '.join(KERNEL_TYPES)}")
        for lst, prob in (("kernel_list", "kernel_prob"), ("kernel_list2", "kernel_prob2")):
            if len(getattr(self, lst)) != len(getattr(self, prob)):
                raise ValueError(f"{prob} needs one probability per entry of {lst}")
        for name in ("kernel_prob", "kernel_prob2", "resize_prob", "resize_prob2"):
            p = getattr(self, name)
            if any(v < 0 for v in p) or abs(sum(p) - 1.0) > 1e-6:
                raise ValueError(f"{name}={p}: probabilities must be >= 0 and sum to 1")
        if len(self.resize_prob) != 3 or len(self.resize_prob2) != 3:
            raise ValueError("resize_prob / resize_prob2 are (up, down, keep)")
        for name in ("blur_kernel_size", "blur_kernel_size2", "final_sinc_kernel_size"):
            sizes = getattr(self, name)
            if not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
                raise ValueError(f"{name}={sizes}: kernel sizes must be odd and >= 1")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith(("_prob", "_prob2")) and not isinstance(v, tuple):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise ValueError(f"{f.name}={v!r}: a probability must be a number in [0, 1]")
            if f.name.endswith(("range", "range2", "sigma", "sigma2", "cutoff", "_small", "_large")):
                if (
                    not isinstance(v, tuple)
                    or len(v) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                    or not all(math.isfinite(x) for x in v)
                    or v[0] > v[1]
                ):
                    raise ValueError(f"{f.name}={v!r}: expected (low, high), finite numbers with low <= high")
                if f.name.startswith("jpeg_range") and not (1 <= v[0] and v[1] <= 100):
                    raise ValueError(f"{f.name}={v!r}: JPEG qualities lie in [1, 100]")
                if f.name.startswith(("noise_range", "poisson_scale_range")) and v[0] < 0:
                    raise ValueError(f"{f.name}={v!r}: must not be negative")
                if f.name.startswith(("blur_sigma", "betag_range", "betap_range", "resize_range")) and v[0] <= 0:
                    raise ValueError(f"{f.name}={v!r}: must be positive")
        if (
            self.resize_range[0] > 1
            or self.resize_range[1] < 1
            or self.resize_range2[0] > 1
            or self.resize_range2[1] < 1
        ):
            raise ValueError("resize ranges must contain 1 (down factors below it, up factors above it)")
        bad_modes = [m for m in self.resize_modes if m not in RESIZE_MODES]
        if bad_modes or not self.resize_modes:
            raise ValueError(f"resize_modes: use some of {', '.join(RESIZE_MODES)}")
        if self.jpeg_backend not in JPEG_BACKENDS:
            raise ValueError(f"jpeg_backend '{self.jpeg_backend}': use one of {', '.join(JPEG_BACKENDS)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DegradationConfig:
        """Build from a dict (e.g. a Real-ESRGAN yml section); unknown keys are an error that names them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown degradation parameter(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------------------------------------
# Random draws: every one comes from the caller's generator (on whatever device it lives).
# ----------------------------------------------------------------------------------------------------------


class _Draws:
    """Scalar draws from one torch.Generator, so a seed fixes the whole pipeline."""

    def __init__(self, generator: torch.Generator):
        self.g = generator

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        u = torch.rand((), generator=self.g, device=self.g.device, dtype=torch.float64).item()
        return low + (high - low) * u

    def index(self, weights) -> int:
        u, acc = self.uniform(), 0.0
        for i, w in enumerate(weights):
            acc += w
            if u < acc:
                return i
        return len(weights) - 1

    def choice(self, items):
        return items[self.index([1.0 / len(items)] * len(items))]


# ----------------------------------------------------------------------------------------------------------
# Kernels: (k, k) float64, sum 1. Sigma is in pixels; the quadratic form uses Sigma = R diag(sx^2, sy^2) R^T.
# ----------------------------------------------------------------------------------------------------------


# numpy, not torch, for these 21 x 21 float64 maps: torch may hand even tiny float64 element-wise ops to its
# thread pool, which costs milliseconds per kernel on a busy CPU; numpy stays single-threaded and exact.


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """x^T Sigma^-1 x on the kernel grid; Sigma: covariance with these axes, rotated by theta."""
    xx, yy = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    u = c * xx + s * yy  # coordinates along the rotated axes
    v = -s * xx + c * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalised(k: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(k / k.sum())


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> torch.Tensor:
    """Bivariate Gaussian, (size, size) float64 summing to 1; isotropic when sigma_y is None."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(np.exp(-0.5 * q))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> torch.Tensor:
    """exp(-0.5 (x^T Sigma^-1 x)^beta): beta = 1 is the Gaussian, < 1 heavier tails, > 1 flatter top."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(np.exp(-0.5 * np.power(q, beta)))


def plateau_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> torch.Tensor:
    """1 / (1 + (x^T Sigma^-1 x)^beta): a flat top that falls to half at the sigma ellipse."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(1.0 / (1.0 + np.power(q, beta)))


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """Circularly symmetric low-pass (2D sinc, "jinc"), cutoff frequency `cutoff` in radians (pi = Nyquist).

    The ideal filter's impulse response is cutoff * J1(cutoff r) / (2 pi r), with value cutoff^2 / (4 pi) at
    r = 0; truncated to size x size and normalised to sum 1.
    """
    xx, yy = _grid(size)
    r = np.sqrt(xx**2 + yy**2)
    safe_r = np.where(r == 0, 1.0, r)
    j1 = torch.special.bessel_j1(torch.from_numpy(cutoff * safe_r)).numpy()
    k = np.where(r == 0, cutoff**2 / (4 * math.pi), cutoff * j1 / (2 * math.pi * safe_r))
    return _normalised(k)


def random_blur_kernel(
    draw: _Draws | torch.Generator,
    sizes: tuple[int, ...],
    kernel_list: tuple[str, ...],
    kernel_prob: tuple[float, ...],
    sinc_prob: float,
    sigma_range: tuple[float, float],
    betag_range: tuple[float, float],
    betap_range: tuple[float, float],
    cfg: DegradationConfig,
) -> dict:
    """One kernel as realesrgan_dataset.py draws it: size, then sinc (prob sinc_prob) or a mixed kernel.

    Returns {"type", "size", parameters..., "kernel": (size, size) float64 tensor summing to 1}."""
    draw = draw if isinstance(draw, _Draws) else _Draws(draw)
    size = draw.choice(sizes)
    if draw.uniform() < sinc_prob:
        cutoff = draw.uniform(*(cfg.sinc_cutoff_small if size < 13 else cfg.sinc_cutoff_large))
        return {"type": "sinc", "size": size, "cutoff": cutoff, "kernel": sinc_kernel(size, cutoff)}
    kind = kernel_list[draw.index(kernel_prob)]
    sx = draw.uniform(*sigma_range)
    if kind.endswith("aniso"):
        sy, theta = draw.uniform(*sigma_range), draw.uniform(*cfg.rotation_range)
    else:
        sy, theta = sx, 0.0
    info = {"type": kind, "size": size, "sigma_x": sx, "sigma_y": sy, "theta": theta}
    if kind in ("iso", "aniso"):
        info["kernel"] = gaussian_kernel(size, sx, sy, theta)
        return info
    # beta: half the time below 1, half above (basicsr's rule; for plateau [1, 2] the lower half is beta = 1)
    lo, hi = betag_range if kind.startswith("generalized") else betap_range
    beta = draw.uniform(lo, 1.0) if draw.uniform() < 0.5 else draw.uniform(1.0, hi)
    info["beta"] = beta
    make = generalized_gaussian_kernel if kind.startswith("generalized") else plateau_kernel
    info["kernel"] = make(size, sx, sy, theta, beta)
    return info


# ----------------------------------------------------------------------------------------------------------
# Operations on (B, 3, H, W) float tensors in [0, 1] (values may leave [0, 1] between steps, as in basicsr).
# ----------------------------------------------------------------------------------------------------------


def filter2d(x: torch.Tensor, kernel: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Convolve every channel with `kernel` (k, k) or per sample (B, k, k); same size out (reflect padding).

    method: "direct" (grouped conv2d), "fft", or "auto": FFT on the CPU for kernels of 9 px and more (the
    direct grouped conv with a 21 x 21 kernel costs ~4x more there; measured 118 vs 31 ms on 3 x 512 x 512,
    one thread), direct conv elsewhere (cuDNN). Both compute the same convolution up to float rounding.
    """
    b, c, h, w = x.shape
    k = kernel.to(device=x.device, dtype=x.dtype)
    if k.ndim == 2:
        k = k.expand(b, *k.shape)
    ks = k.shape[-1]
    pad = ks // 2
    if pad == 0:
        return x * k.reshape(b, 1, 1, 1)
    # reflect needs pad < size; tiny images (deep down-scaling of small crops) fall back to replicate
    mode = "reflect" if pad < h and pad < w else "replicate"
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    if method == "auto":
        method = "fft" if x.device.type == "cpu" and ks >= 9 else "direct"
    if method == "fft":
        hp, wp = xp.shape[-2:]
        spectrum = torch.fft.rfft2(xp) * torch.fft.rfft2(k, s=(hp, wp))[:, None]
        full = torch.fft.irfft2(spectrum, s=(hp, wp))  # circular convolution; its valid part is the answer
        return full[..., ks - 1 : ks - 1 + h, ks - 1 : ks - 1 + w].contiguous()
    weight = k[:, None].repeat_interleave(c, dim=0)  # (B*C, 1, k, k)
    # conv2d computes a correlation: flip the kernel for a convolution
    out = F.conv2d(xp.reshape(1, b * c, *xp.shape[-2:]), weight.flip(-1, -2), groups=b * c)
    return out.reshape(b, c, h, w)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """F.interpolate to `size` (no antialiasing and no clamping, as in the reference)."""
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def add_gaussian_noise(
    x: torch.Tensor, sigma: torch.Tensor | float, gray: torch.Tensor | bool, generator: torch.Generator
) -> torch.Tensor:
    """x + N(0, (sigma/255)^2) per pixel, clamped to [0, 1]. sigma (B,) on the 0..255 scale; gray (B,) bool:
    one noise plane shared by the three channels."""
    b, c, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1).expand(b, 1, 1, 1)
    gray = _host_flags(gray, b)

    def colour():
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def plane():
        return torch.randn((b, 1, h, w), generator=generator, device=x.device, dtype=x.dtype).expand_as(x)

    noise = _mix(gray, colour, plane, x.device)
    return (x + noise * sigma / 255.0).clamp(0, 1)


def _host_flags(flags, b: int) -> torch.Tensor:
    """Per-sample booleans on the CPU (they decide which tensors to draw; no device sync for python bools)."""
    return torch.as_tensor(flags).reshape(-1).expand(b).cpu().bool()


def _mix(gray: torch.Tensor, colour, gray_fn, device) -> torch.Tensor:
    """colour() where gray is False, gray_fn() where True; draws only what is needed."""
    if bool(gray.all()):
        return gray_fn()
    if not bool(gray.any()):
        return colour()
    c, g = colour(), gray_fn()
    return torch.where(gray.to(device).reshape(-1, 1, 1, 1), g, c)


def _distinct_levels(q: torch.Tensor) -> torch.Tensor:
    """(B, ...) integer 0..255 -> (B,) number of distinct values per sample, with no host sync per sample."""
    b = q.shape[0]
    flat = q.reshape(b, -1).long() + 256 * torch.arange(b, device=q.device)[:, None]
    hist = torch.bincount(flat.reshape(-1), minlength=256 * b).reshape(b, 256)
    return (hist > 0).sum(1)


def add_poisson_noise(
    x: torch.Tensor, scale: torch.Tensor | float, gray: torch.Tensor | bool, generator: torch.Generator
) -> torch.Tensor:
    """Shot noise as basicsr models it: the image quantised to 8 bits, counts ~ Poisson(img * L) with L the
    number of distinct levels rounded up to a power of two, noise = (counts / L - img) * scale; clamped to
    [0, 1]. Its standard deviation is scale * sqrt(img / L). gray (B,) bool: computed on the luma plane
    (ITU-R 601)."""
    b, c, h, w = x.shape
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1).expand(b, 1, 1, 1)
    gray = _host_flags(gray, b)

    def shot(img):
        q = (img * 255.0).round().clamp(0, 255)
        levels = torch.exp2(torch.ceil(torch.log2(_distinct_levels(q).to(x.dtype)))).reshape(b, 1, 1, 1)
        img = q / 255.0
        return torch.poisson(img * levels, generator=generator) / levels - img

    def luma():
        return shot(0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)

    noise = _mix(gray, lambda: shot(x), luma, x.device)
    return (x + noise * scale).clamp(0, 1)


# --- JPEG (baseline, 4:2:0, IJG quality scaling), in torch --------------------------------------------------

# ITU-T T.81 Annex K tables (luminance, chrominance), row-major 8x8.
_JPEG_LUMA = [
    16,
    11,
    10,
    16,
    24,
    40,
    51,
    61,
    12,
    12,
    14,
    19,
    26,
    58,
    60,
    55,
    14,
    13,
    16,
    24,
    40,
    57,
    69,
    56,
    14,
    17,
    22,
    29,
    51,
    87,
    80,
    62,
    18,
    22,
    37,
    56,
    68,
    109,
    103,
    77,
    24,
    35,
    55,
    64,
    81,
    104,
    113,
    92,
    49,
    64,
    78,
    87,
    103,
    121,
    120,
    101,
    72,
    92,
    95,
    98,
    112,
    100,
    103,
    99,
]
_JPEG_CHROMA = [
    17,
    18,
    24,
    47,
    99,
    99,
    99,
    99,
    18,
    21,
    26,
    66,
    99,
    99,
    99,
    99,
    24,
    26,
    56,
    99,
    99,
    99,
    99,
    99,
    47,
    66,
    99,
    99,
    99,
    99,
    99,
    99,
] + [99] * 32


def _dct_matrix(device, dtype) -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.to(device=device, dtype=dtype)  # orthonormal DCT-II: coeffs = M @ block @ M^T


def jpeg_quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) qualities in [1, 100] (fractional allowed) -> (B, 8, 8) luma and chroma tables, IJG scaling."""
    q = quality.double().clamp(1, 100)
    s = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q).reshape(-1, 1, 1)

    def table(base):
        t = torch.tensor(base, dtype=torch.float64, device=q.device).reshape(1, 8, 8)
        return torch.floor((t * s + 50.0) / 100.0).clamp(1, 255)

    return table(_JPEG_LUMA), table(_JPEG_CHROMA)


def _blockwise(plane: torch.Tensor, table: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(B, H, W) level-shifted plane (H, W multiples of 8) -> DCT, quantise, dequantise, inverse DCT."""
    b, h, w = plane.shape
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 64)
    k = torch.kron(m, m)  # row-major vec(M X M^T) = (M kron M) vec(X): one GEMM for all blocks
    coef = blocks @ k.T
    t = table.to(plane.dtype).reshape(b, 1, 64)
    coef = torch.round(coef / t) * t
    out = (coef @ k).reshape(b, h // 8, w // 8, 8, 8)
    return out.permute(0, 1, 3, 2, 4).reshape(b, h, w)


def jpeg_compress(x: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
    """Baseline JPEG round trip in torch (any device, batched): (B, 3, H, W) in [0, 1], quality (B,) -> same
    shape, 8-bit values in [0, 1].

    JFIF YCbCr, 4:2:0 chroma (2x2 mean; bilinear upsampling like libjpeg's "fancy" upsampling), 8x8
    orthonormal DCT, IJG-scaled Annex K tables (identical to libjpeg's for integer qualities), edges padded by
    replication to a multiple of 16 as encoders do. Not bit-identical to libjpeg (integer DCTs): on the
    example photos the two outputs differ by 40-46 dB PSNR and lose the same PSNR to the original within
    0.3 dB (qualities 10-95).
    """
    b, _, h, w = x.shape
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    quality = torch.as_tensor(quality, device=x.device, dtype=torch.float64).reshape(-1).expand(b)
    luma_t, chroma_t = jpeg_quant_tables(quality)
    m = _dct_matrix(x.device, dtype)
    ph, pw = (-h) % 16, (-w) % 16
    img = (x.to(dtype).clamp(0, 1) * 255.0).round()  # the encoder sees 8-bit samples
    img = F.pad(img, (0, pw, 0, ph), mode="replicate") if ph or pw else img
    r, g, bl = img[:, 0], img[:, 1], img[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl + 128.0
    y = _blockwise(y - 128.0, luma_t, m) + 128.0
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)  # (B, 2, H/2, W/2)
    cb_c = _blockwise(chroma[:, 0] - 128.0, chroma_t, m)
    cr_c = _blockwise(chroma[:, 1] - 128.0, chroma_t, m)
    # libjpeg's default "fancy" chroma upsampling: triangle filter (3/4, 1/4) = bilinear, half-pixel centres
    cbcr = F.interpolate(torch.stack([cb_c, cr_c], 1), scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = cbcr[:, 0], cbcr[:, 1]
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    bl = y + 1.772 * cb
    out = torch.stack([r, g, bl], 1).round().clamp(0, 255) / 255.0  # the decoder outputs 8-bit samples
    return out[:, :, :h, :w].to(x.dtype)


def jpeg_compress_pil(x: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
    """The same round trip via libjpeg (Pillow, 4:2:0), one image at a time on the CPU; integer quality."""
    from PIL import Image

    b = x.shape[0]
    quality = torch.as_tensor(quality, dtype=torch.float64).reshape(-1).expand(b)
    arrays = (x.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    outs = []
    for arr, q in zip(arrays, quality.tolist(), strict=True):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(round(q)), subsampling=2)
        buf.seek(0)
        with Image.open(buf) as im:
            outs.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()))
    return torch.stack(outs).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255.0


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------


class RealESRGANDegrader:
    """Synthesise LQ inputs from HQ images with the Real-ESRGAN second-order pipeline.

    __call__(hq, generator) -> lq
        hq: float (B, 3, H, W) in [0, 1], any device, H and W multiples of `scale`.
        lq: float (B, 3, H/scale, W/scale) in [0, 1], quantised to 8 bits (k/255), same device and dtype.
        Every random draw comes from `generator`: the same seed gives a bit-identical result (on one device).
    degrade(hq, generator) -> (lq, plans): also returns, per sample, the plan that was drawn and applied.

    Each sample is one `draw_plan` (every random choice, the kernels, and seeds for the noise tensors, drawn
    in a fixed order that does not depend on the image) followed by `apply_plan` (no randomness of its own
    besides generators seeded from the plan).
    """

    def __init__(self, config: DegradationConfig | None = None, scale: int = 4):
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.config = config or DegradationConfig()
        self.scale = int(scale)

    def __call__(self, hq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.degrade(hq, generator)[0]

    @torch.no_grad()
    def degrade(self, hq: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, list[dict]]:
        if hq.ndim != 4 or hq.shape[1] != 3:
            raise ValueError(f"expected an HQ batch (B, 3, H, W), got shape {tuple(hq.shape)}")
        h, w = hq.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(f"HQ size {h}x{w} is not a multiple of the scale {self.scale}")
        draw = _Draws(generator)
        x = hq.float() if hq.dtype in (torch.float16, torch.bfloat16) else hq
        outs, plans = [], []
        for i in range(x.shape[0]):
            plan = self.draw_plan(draw)
            outs.append(self.apply_plan(x[i : i + 1], plan))
            plans.append(plan)
        return torch.cat(outs).to(hq.dtype), plans

    # --- drawing ------------------------------------------------------------------------------------------

    def draw_plan(self, generator: torch.Generator | _Draws) -> dict:
        """All random choices for one sample. Keys: blur1, resize1, noise1, jpeg1, second_order, [blur2 (None
        when skipped), resize2, noise2], final_sinc (None when skipped), final_mode, jpeg2, resize_first."""
        draw = generator if isinstance(generator, _Draws) else _Draws(generator)
        c = self.config
        plan: dict = {}
        plan["blur1"] = random_blur_kernel(
            draw,
            c.blur_kernel_size,
            c.kernel_list,
            c.kernel_prob,
            c.sinc_prob,
            c.blur_sigma,
            c.betag_range,
            c.betap_range,
            c,
        )
        plan["resize1"] = self._resize_draw(draw, c.resize_prob, c.resize_range)
        plan["noise1"] = self._noise_draw(
            draw, c.gaussian_noise_prob, c.noise_range, c.poisson_scale_range, c.gray_noise_prob
        )
        plan["jpeg1"] = draw.uniform(*c.jpeg_range)
        plan["second_order"] = draw.uniform() < c.second_order_prob
        if plan["second_order"]:
            blur2 = random_blur_kernel(
                draw,
                c.blur_kernel_size2,
                c.kernel_list2,
                c.kernel_prob2,
                c.sinc_prob2,
                c.blur_sigma2,
                c.betag_range2,
                c.betap_range2,
                c,
            )
            plan["blur2"] = blur2 if draw.uniform() < c.second_blur_prob else None
            plan["resize2"] = self._resize_draw(draw, c.resize_prob2, c.resize_range2)
            plan["noise2"] = self._noise_draw(
                draw, c.gaussian_noise_prob2, c.noise_range2, c.poisson_scale_range2, c.gray_noise_prob2
            )
        plan["final_sinc"] = None
        if draw.uniform() < c.final_sinc_prob:
            size, cutoff = draw.choice(c.final_sinc_kernel_size), draw.uniform(*c.final_sinc_cutoff)
            plan["final_sinc"] = {
                "type": "sinc",
                "size": size,
                "cutoff": cutoff,
                "kernel": sinc_kernel(size, cutoff),
            }
        plan["final_mode"] = draw.choice(c.resize_modes)
        plan["jpeg2"] = draw.uniform(*c.jpeg_range2)
        plan["resize_first"] = draw.uniform() < c.final_order_prob
        return plan

    def _resize_draw(self, draw: _Draws, probs, factor_range) -> dict:
        kind = ("up", "down", "keep")[draw.index(probs)]
        if kind == "up":
            factor = draw.uniform(1.0, factor_range[1])
        elif kind == "down":
            factor = draw.uniform(factor_range[0], 1.0)
        else:
            factor = 1.0
        return {"kind": kind, "factor": factor, "mode": draw.choice(self.config.resize_modes)}

    @staticmethod
    def _noise_draw(draw: _Draws, gaussian_prob, sigma_range, poisson_range, gray_prob) -> dict:
        if draw.uniform() < gaussian_prob:
            noise = {"type": "gaussian", "sigma": draw.uniform(*sigma_range)}
        else:
            noise = {"type": "poisson", "scale": draw.uniform(*poisson_range)}
        noise["gray"] = draw.uniform() < gray_prob
        noise["seed"] = int(torch.randint(0, 2**62, (), generator=draw.g, device=draw.g.device).item())
        return noise

    # --- applying -----------------------------------------------------------------------------------------

    def apply_plan(self, x: torch.Tensor, plan: dict) -> torch.Tensor:
        """(1, 3, H, W) HQ -> (1, 3, H/scale, W/scale) LQ, 8-bit quantised, following `plan`."""
        h, w = x.shape[-2:]
        lq_size = (h // self.scale, w // self.scale)
        # stage 1: blur -> resize (relative to the current size) -> noise -> JPEG
        x = filter2d(x, plan["blur1"]["kernel"])
        r = plan["resize1"]
        x = resize(x, (int(h * r["factor"]), int(w * r["factor"])), r["mode"])
        r["size"] = tuple(x.shape[-2:])  # recorded for the trace
        x = self._apply_noise(x, plan["noise1"])
        x = self._jpeg(x.clamp(0, 1), plan["jpeg1"])
        # stage 2: blur (may be skipped) -> resize (relative to the LQ size) -> noise
        if plan["second_order"]:
            if plan["blur2"] is not None:
                x = filter2d(x, plan["blur2"]["kernel"])
            r = plan["resize2"]
            x = resize(x, (int(lq_size[0] * r["factor"]), int(lq_size[1] * r["factor"])), r["mode"])
            r["size"] = tuple(x.shape[-2:])
            x = self._apply_noise(x, plan["noise2"])

        # final: [resize to the LQ size + sinc] and JPEG, in the drawn order
        def resize_and_sinc(t):
            t = resize(t, lq_size, plan["final_mode"])
            return filter2d(t, plan["final_sinc"]["kernel"]) if plan["final_sinc"] is not None else t

        if plan["resize_first"]:
            x = self._jpeg(resize_and_sinc(x).clamp(0, 1), plan["jpeg2"])
        else:
            x = resize_and_sinc(self._jpeg(x.clamp(0, 1), plan["jpeg2"]))
        return (x * 255.0).round().clamp(0, 255) / 255.0  # clamp and quantise to 8 bits

    @staticmethod
    def _apply_noise(x: torch.Tensor, noise: dict) -> torch.Tensor:
        g = torch.Generator(device=x.device).manual_seed(noise["seed"])
        if noise["type"] == "gaussian":
            return add_gaussian_noise(x, noise["sigma"], noise["gray"], g)
        return add_poisson_noise(x, noise["scale"], noise["gray"], g)

    def _jpeg(self, x: torch.Tensor, quality: float) -> torch.Tensor:
        if self.config.jpeg_backend == "pil":
            return jpeg_compress_pil(x, quality)
        return jpeg_compress(x, quality)
