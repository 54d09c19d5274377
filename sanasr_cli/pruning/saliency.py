"""The diagonal curvature proxy and block saliency (paper App. A.7, Eq. 22-24).

    F_i = 1/K sum_k omega(t_k) (dL_cal^(k) / dw_i)^2                 (Eq. 23)
    S_l = sum_{w_i in block l} w_i^2 / (F_i + eps_p)                  (Eq. 24)

L_cal^(k) = omega(t_k)(L_rec + lambda_a L_align) (Eq. 21) already carries one omega(t_k); Eq. 23 and
Algorithm 2 (line 7) weight the squared gradient by omega(t_k) again. We follow the paper literally (both
weights): with g the gradient of the unweighted loss, each step adds omega(t_k) (omega(t_k) g)^2 =
omega(t_k)^3 g^2 to F_i (tests/test_pruning.py checks exactly this, so dropping either omega fails).
Since omega(t) is one scalar per step, the readings differ only in how steps are weighted against each other
and in F's overall scale relative to eps_p.

eps_p (Eq. 24, "a stabilizer", value not given in the paper) is DEFAULT_EPS_P = 1e-8. `fisher_statistics`
reports which share of the F_i entering S_l fall below it (prune_report.json: `fisher`), i.e. where eps_p,
not the curvature, sets the score.
F is kept in float32 whatever the model's dtype (bf16 gradients squared underflow quickly).
"""

from __future__ import annotations

import math

import torch

from sanasr_cli.pruning.blocks import block_index

DEFAULT_EPS_P = 1e-8


class FisherAccumulator:
    """Running sum of omega(t_k) g_i^2 over every parameter of `module` (all of them, not only the blocks).

    Call `accumulate(omega)` after each backward pass (it reads `.grad`, then clears it), and `fisher()` at
    the end for F = sum / K. Tensors: one float32 buffer per parameter, same shape, on the parameter's device.
    """

    def __init__(self, module: torch.nn.Module):
        self.params = {name: p for name, p in module.named_parameters()}
        self.sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in self.params.items()}
        self.steps = 0

    def accumulate(self, omega: float) -> None:
        for name, p in self.params.items():
            if p.grad is not None:
                self.sums[name].add_(p.grad.detach().float().square(), alpha=float(omega))
                p.grad = None
        self.steps += 1

    def fisher(self) -> dict[str, torch.Tensor]:
        if self.steps == 0:
            raise ValueError("no calibration step was accumulated")
        return {name: s / self.steps for name, s in self.sums.items()}


def fisher_block_saliency(
    transformer: torch.nn.Module, fisher: dict[str, torch.Tensor], eps_p: float = DEFAULT_EPS_P
) -> list[float]:
    """S_l of Eq. 24 for every block l = 0..L-1 (float64 sums: 20 M terms per block on the real model)."""
    n = len(transformer.transformer_blocks)
    scores = [0.0] * n
    for name, p in transformer.named_parameters():
        idx = block_index(name)
        if idx is None:
            continue
        w2 = p.detach().double().square()
        scores[idx] += float((w2 / (fisher[name].double() + eps_p)).sum())
    return scores


def fisher_statistics(
    transformer: torch.nn.Module, fisher: dict[str, torch.Tensor], eps_p: float = DEFAULT_EPS_P
) -> dict:
    """Summary of F over the block parameters (those in S_l): how many F_i are below eps_p (there the score
    is ~ w^2 / eps_p, the stabilizer decides) or exactly 0, min / max, and a count per decade of F."""
    count = below = zero = 0
    low, high = math.inf, -math.inf
    decades: dict[int, int] = {}
    for name, _ in transformer.named_parameters():
        if block_index(name) is None:
            continue
        f = fisher[name].detach().float().flatten()
        count += f.numel()
        below += int((f < eps_p).sum())
        zero += int((f == 0).sum())
        low, high = min(low, float(f.min())), max(high, float(f.max()))
        exps = torch.floor(torch.log10(f[f > 0])).to(torch.int64)
        values, counts = torch.unique(exps, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            decades[v] = decades.get(v, 0) + c
    return {
        "eps_p": eps_p,
        "counted_over": "F_i of the transformer blocks' parameters (those in S_l, Eq. 24)",
        "count": count,
        "below_eps_p": below,
        "fraction_below_eps_p": below / count if count else 0.0,
        "zero": zero,
        "min": low if count else None,
        "max": high if count else None,
        "decades": {f"1e{k}": decades[k] for k in sorted(decades)},  # F in [10^k, 10^(k+1)): count
    }


def magnitude_block_saliency(transformer: torch.nn.Module) -> list[float]:
    """The `magnitude` baseline: sum of w^2 over each block's parameters."""
    n = len(transformer.transformer_blocks)
    scores = [0.0] * n
    for name, p in transformer.named_parameters():
        idx = block_index(name)
        if idx is not None:
            scores[idx] += float(p.detach().double().square().sum())
    return scores
