"""The training objective as one `nn.Module`, so that DDP (through accelerate) sees one forward per backward.

The SANA-SR step calls the transformer three times (restore with the adapter, the frozen prior on both
perturbed latents, the adapter again for L_cons); wrapping the whole objective keeps those calls inside a
single DDP forward, where shared weights are fine, instead of three forwards of a wrapped transformer that DDP
would not allow. The VAE and the LPIPS network are frozen and held as plain attributes (not submodules), so
DDP neither broadcasts nor tracks them.
"""

from __future__ import annotations

import torch

from sanasr_cli.models.restorer import OneStepRestorer
from sanasr_cli.models.vae import LatentCodec
from sanasr_cli.training.losses import LossWeights, PerceptualLoss, PromptProtocol, compute_task_losses

TERM_NAMES = ("loss", "pixel", "perceptual", "align", "consistency", "teacher")


class TrainingObjective(torch.nn.Module):
    def __init__(
        self,
        restorer: OneStepRestorer,
        codec: LatentCodec,
        weights: LossWeights,
        protocol: PromptProtocol,
        perceptual: PerceptualLoss | None,
    ):
        super().__init__()
        self.restorer = restorer  # the only submodule: its LoRA weights are the trainable parameters
        self.__dict__["codec"] = codec
        self.__dict__["perceptual"] = perceptual
        self.weights = weights
        self.protocol = protocol

    def forward(
        self,
        lq_upsampled: torch.Tensor,
        hq: torch.Tensor,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
        teacher: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Eq. 8 on a batch. lq_upsampled, hq (and a teacher's output, when training with one): (B, 3, H, W) in
        [0, 1] on the model's device; embeds (B, T, D), mask (B, T). Returns {"loss", "pixel", "perceptual",
        "align", "consistency", "teacher"} (scalar tensors; only "loss" carries the graph) and "t" (the alignment
        timestep as a float tensor)."""
        terms = compute_task_losses(
            self.restorer,
            self.codec,
            lq_upsampled,
            hq,
            embeds,
            mask,
            self.weights,
            self.protocol,
            self.perceptual,
            generator=generator,
            teacher=teacher,
        )
        out = {
            "loss": terms.total,
            "pixel": terms.pixel.detach(),
            "perceptual": terms.perceptual.detach(),
            "align": terms.align.detach(),
            "consistency": terms.consistency.detach(),
            "teacher": terms.teacher.detach(),
        }
        out["t"] = torch.tensor(float(terms.timestep), device=terms.total.device)
        return out
