"""The diagonal curvature proxy and block saliency (paper App. A.7, Eq. 22-24).

    F_i = 1/K sum_k omega(t_k) (dL_cal^(k) / dw_i)^2                 (Eq. 23)
    S_l = sum_{w_i in block l} w_i^2 / (F_i + eps_p)                  (Eq. 24)

L_cal^(k) = omega(t_k)(L_rec + lambda_a L_align) (Eq. 21) already carries one omega(t_k); Eq. 23 weights the
squared gradient by omega(t_k) again. We follow the paper literally (both weights), so F_i scales as omega^3.
F is kept in float32 whatever the model's dtype (bf16 gradients squared underflow quickly).
"""

from __future__ import annotations

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


def magnitude_block_saliency(transformer: torch.nn.Module) -> list[float]:
    """The `magnitude` baseline: sum of w^2 over each block's parameters."""
    n = len(transformer.transformer_blocks)
    scores = [0.0] * n
    for name, p in transformer.named_parameters():
        idx = block_index(name)
        if idx is not None:
            scores[idx] += float(p.detach().double().square().sum())
    return scores
