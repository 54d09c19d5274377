"""Flow-matching schedule coefficients (paper Eq. 4, 16-17; App. A.4).

SANA is trained with rectified flow: x_t = (1 - sigma_t) x_0 + sigma_t eps, with the time shift
sigma(t) = s t / (1 + (s - 1) t), t = tau / T. The shift s is read from the base model's scheduler config
(3.0 for SANA 512/1024) and recorded in every model description.

The timestep convention (one place): tau is the paper's integer-scale timestep (tau_g = 900, t in [70, 650]);
the transformer is fed `model_timestep(tau) = T * sigma_tau`, exactly what diffusers' flow-matching schedulers
hand SANA's transformer (`FlowMatchEulerDiscreteScheduler.timesteps = sigmas * T`), and what SANA was trained
with; the perturbation of Eq. 17 uses the same sigma_tau. A prior told the raw tau is told the wrong noise level.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

NUM_TRAIN_TIMESTEPS = 1000


def flow_sigma(tau: float | torch.Tensor, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """sigma_tau for an integer-scale timestep tau in [0, T]; works on floats and tensors alike."""
    t = tau / num_train_timesteps
    return shift * t / (1 + (shift - 1) * t)


# Recorded in sanasr.json ("timestep_convention"); model directories written before it feed the raw tau.
TIMESTEP_CONVENTION = "sigma*1000"
LEGACY_TIMESTEP_CONVENTION = "raw-tau"


def model_timestep(tau: float | torch.Tensor, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """What the transformer receives for the paper's timestep tau: T * sigma_tau (float; keep it float32)."""
    return num_train_timesteps * flow_sigma(tau, shift, num_train_timesteps)


def perturb(z: torch.Tensor, eps: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """z~ = alpha_t z + sigma_t eps with alpha_t = 1 - sigma_t (Eq. 17, App. A.4).

    sigma is a float or a per-sample tensor of shape (B,).
    """
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
        sigma = sigma.view(-1, *([1] * (z.ndim - 1)))
    return (1 - sigma) * z + sigma * eps


def timestep_weight(t: float | torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """omega(t) = (log(T+1) - log(t+1)) / log(T+1) (Eq. 22): 1 at t=0, 0 at t=T."""
    log_t1 = math.log(num_train_timesteps + 1)
    if isinstance(t, torch.Tensor):
        return (log_t1 - torch.log(t.to(torch.float64) + 1)) / log_t1
    return (log_t1 - math.log(t + 1)) / log_t1


def read_flow_shift(scheduler_dir: str | Path) -> float:
    """The shift of a diffusers scheduler folder: `flow_shift` (DPM-Solver flow) or `shift` (FlowMatchEuler)."""
    cfg = json.loads((Path(scheduler_dir) / "scheduler_config.json").read_text())
    for key in ("flow_shift", "shift"):
        if cfg.get(key) is not None:
            return float(cfg[key])
    raise KeyError(f"no 'flow_shift' or 'shift' in {scheduler_dir}/scheduler_config.json")
