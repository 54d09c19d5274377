"""The K calibration steps of Algorithm 2 (lines 4-9): accumulate F_i over every transformer parameter.

Each step: encode the batch's prompts with the model's prompt rule (the same as inference), compute
L_cal = omega(t_k)(L_rec + lambda_a L_align) with the shared training losses (no consistency term),
backpropagate
into the (merged, adapter-free) transformer and add omega(t_k) g_i^2 to F_i.

After the merge there is no separate frozen prior: the alignment responses come from the merged model itself,
which is the dense model f-bar_theta that Algorithm 2 calibrates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from sanasr_cli.models.lora import has_adapter
from sanasr_cli.models.schedule import timestep_weight
from sanasr_cli.pruning.saliency import FisherAccumulator
from sanasr_cli.training.losses import LossWeights, PerceptualLoss, PromptProtocol, compute_task_losses


@dataclass
class CalibrationBatch:
    """lq_upsampled, hq: (B, 3, H, W) float in [0, 1], H, W multiples of the VAE factor; B prompts."""

    lq_upsampled: torch.Tensor
    hq: torch.Tensor
    prompts: list[str]


@dataclass
class StepRecord:
    step: int  # 1-based
    loss: float  # L_cal of this step
    timestep: int  # t_k
    omega: float  # omega(t_k)
    batch: int = 1  # samples in this step


def calibrate_fisher(
    model,
    batches: Iterator[CalibrationBatch],
    steps: int,
    weights: LossWeights,
    protocol: PromptProtocol,
    perceptual: PerceptualLoss | None,
    generator: torch.Generator,
    on_step: Callable[[StepRecord], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[StepRecord]]:
    """Run K = `steps` calibration steps on `model` (a SanaSR without adapter); returns (F, per-step records).

    F maps every transformer parameter name to a float32 tensor of its shape. The transformer's weights are
    not changed; it is left frozen (requires_grad False) afterwards. `batches` must yield at least `steps`
    batches (`calib_data.calibration_batches` is endless).
    """
    transformer = model.transformer
    if has_adapter(transformer):
        raise ValueError("calibrate the merged model: merge the LoRA adapter first")
    accumulator = FisherAccumulator(transformer)
    records: list[StepRecord] = []
    transformer.requires_grad_(True)
    try:
        for k in range(1, steps + 1):
            batch = next(batches)
            device = model.device
            with torch.no_grad():
                embeds, mask = model.prompts.encode(batch.prompts)
            terms = compute_task_losses(
                model.restorer,
                model.codec,
                batch.lq_upsampled.to(device),
                batch.hq.to(device),
                embeds,
                mask,
                weights,
                protocol,
                perceptual,
                generator=generator,
                with_consistency=False,
                calibration_weight=True,
            )
            terms.total.backward()
            omega = float(timestep_weight(terms.timestep))
            accumulator.accumulate(omega)
            rec = StepRecord(k, float(terms.total.detach()), terms.timestep, omega, len(batch.prompts))
            records.append(rec)
            if on_step:
                on_step(rec)
    finally:
        transformer.requires_grad_(False)
        transformer.zero_grad(set_to_none=True)
    return accumulator.fisher(), records
