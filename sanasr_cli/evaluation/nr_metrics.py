"""No-reference metrics that run offline: NIQE and BRISQUE, with parameters shipped inside sanasr.

pyiqa downloads the parameters of its NIQE and BRISQUE on first use; here they are plain JSON files in
`nr_params/`, converted once from the packages that ship them (`python -m recipes.nr_params`, which records the
origin, licence and SHA-256 of every file). Nothing is unpickled and nothing is downloaded.

- NIQE is pyiqa's own implementation (`pyiqa.archs.niqe_arch.calculate_niqe`, as `pyiqa.create_metric('niqe')`
  runs it: Y of YIQ, i.e. MATLAB's rgb2gray, rounded to 0..255, float64, 96x96 blocks on two scales) with the
  pristine model of the NIQE MATLAB release, as BasicSR 1.4.2 ships it: the parameters pyiqa's 'niqe' downloads.
- BRISQUE is the brisque 0.2.0 package's (rehanguha/brisque): its 36 features as that package computes them, its
  min/max feature scaling and its libsvm epsilon-SVR. Its SVR was trained on its own features, so they are
  computed its way, not pyiqa's: with pyiqa's feature code the same SVR scores the examples up to 40 points
  apart. It is therefore not pyiqa's 'brisque' (the MATLAB release's SVR, another model).

Each metric states the smallest image it accepts (MIN_SIZE); docs/eval-bench.md says how large a crop must be
for its score to be stable.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

PARAMS_DIR = Path(__file__).with_name("nr_params")
NIQE_BLOCK = 96  # pyiqa's (and MATLAB's) block size; features are fitted per block, the blocks' MVG against the model
MIN_SIZE = {
    # 2x2 blocks: with one block pyiqa still returns a number, from a covariance of one sample
    "niqe": 2 * NIQE_BLOCK,
    # the brisque package's features need both scales several 7x7 windows wide; below 24 px they are undefined
    # (NaN) or meaningless (at 16 px every feature is NaN and the SVR returns -rho)
    "brisque": 32,
}


@functools.cache
def load_params(name: str) -> dict:
    """One shipped parameter file (niqe_pristine.json, brisque_svr.json) as parsed JSON."""
    return json.loads((PARAMS_DIR / name).read_text())


def _images(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (N, 3, H, W), got {tuple(x.shape)}")
    return x


class NIQE(torch.nn.Module):
    """pyiqa's NIQE with MATLAB's pristine model, from the shipped niqe_pristine.json; lower is better."""

    def __init__(self) -> None:
        super().__init__()
        params = load_params("niqe_pristine.json")
        self.register_buffer("mu_pris_param", torch.tensor(params["mu_pris_param"], dtype=torch.float64))
        self.register_buffer("cov_pris_param", torch.tensor(params["cov_pris_param"], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from pyiqa.archs.niqe_arch import calculate_niqe

        # the arguments pyiqa's 'niqe' passes: no border crop, Y channel of YIQ
        score = calculate_niqe(_images(x), 0, True, "yiq", self.mu_pris_param, self.cov_pris_param)
        return score.reshape(-1)


# ---------------------------------------------------------------- BRISQUE, as the brisque 0.2.0 package computes it

_GRAY = np.array([0.2125, 0.7154, 0.0721])  # skimage.color.rgb2gray's weights, which the package uses
_MSCN_C = 1 / 255  # the package's stabilising constant for grey levels in [0, 1]


def _gaussian_window(n: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    y, x = np.indices((n, n)) - n // 2
    window = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return window / window.sum()


def mscn(gray: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients: 7x7 Gaussian (sigma 7/6), zero-padded 'same' filtering."""
    from scipy.signal import convolve2d

    window = _gaussian_window()
    mu = convolve2d(gray, window, "same")
    sigma = np.sqrt(np.abs(mu**2 - convolve2d(gray**2, window, "same")))
    return (gray - mu) / (sigma + _MSCN_C)


def aggd_fit(x: np.ndarray) -> tuple[float, float, float, float]:
    """(alpha, mean, left variance, right variance) of an asymmetric generalised Gaussian, the package's way:
    alpha solves rho(alpha) = R_hat with scipy.optimize.root from 0.2 (no grid); left: x < 0, right: x >= 0."""
    from scipy import optimize, special

    x = x.ravel()
    left, right = x[x < 0], x[x >= 0]
    left_var, right_var = np.mean(left**2), np.mean(right**2)
    gamma_hat = np.sqrt(left_var) / np.sqrt(right_var)
    r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2

    def rho(alpha):
        return special.gamma(2 / alpha) ** 2 / (special.gamma(1 / alpha) * special.gamma(3 / alpha)) - r_hat_norm

    alpha = float(optimize.root(rho, [0.2]).x[0])
    scale = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
    mean = (np.sqrt(right_var) - np.sqrt(left_var)) * scale * special.gamma(2 / alpha) / special.gamma(1 / alpha)
    return alpha, float(mean), float(left_var), float(right_var)


def _scale_features(gray: np.ndarray) -> list[float]:
    m = mscn(gray)
    alpha, _, left_var, right_var = aggd_fit(m)
    features = [alpha, (left_var + right_var) / 2]
    products = (
        m[:, :-1] * m[:, 1:],  # horizontal neighbours
        m[:-1, :] * m[1:, :],  # vertical
        m[:-1, :-1] * m[1:, 1:],  # main diagonal
        m[1:, :-1] * m[:-1, 1:],  # secondary diagonal
    )
    for p in products:
        features.extend(aggd_fit(p))
    return features


def brisque_features(rgb: np.ndarray) -> np.ndarray:
    """The package's 36 features of an RGB image (H, W, 3) in [0, 1]: 18 at full size, 18 at half size
    (OpenCV's bicubic resize by 1/2, no antialiasing)."""
    import cv2

    gray = np.asarray(rgb, dtype=np.float64) @ _GRAY
    half = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    return np.array(_scale_features(gray) + _scale_features(half))


class BRISQUE(torch.nn.Module):
    """The brisque 0.2.0 package's BRISQUE (features, scaling and SVR), from the shipped brisque_svr.json."""

    def __init__(self) -> None:
        super().__init__()
        params = load_params("brisque_svr.json")
        self.feature_min = np.array(params["feature_min"])
        self.feature_max = np.array(params["feature_max"])
        self.support_vectors = np.array(params["support_vectors"])
        self.coefficients = np.array(params["coefficients"])
        self.gamma, self.rho = float(params["gamma"]), float(params["rho"])

    def predict(self, features: np.ndarray) -> float:
        """libsvm's epsilon-SVR decision value on min/max-scaled features (the package's score)."""
        scaled = -1 + 2 * (features - self.feature_min) / (self.feature_max - self.feature_min)
        kernel = np.exp(-self.gamma * np.sum((self.support_vectors - scaled) ** 2, axis=1))
        return float(self.coefficients @ kernel - self.rho)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the 8-bit image, as the package reads it (uint8 / 255): its root solve for alpha is loose enough that
        # float32's rounding of k / 255 moves a large photo's score by ~0.02
        images = (_images(x).detach().to("cpu", torch.float64) * 255).round().clamp(0, 255) / 255
        images = images.permute(0, 2, 3, 1).numpy()
        with np.errstate(divide="ignore", invalid="ignore"):  # a flat image gives NaN, as in the package
            scores = [self.predict(brisque_features(image)) for image in images]
        return torch.tensor(scores, dtype=torch.float64)


BUILDERS = {"niqe": NIQE, "brisque": BRISQUE}
