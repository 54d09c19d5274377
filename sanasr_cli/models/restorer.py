"""The one-step LinearDiT restorer (Eq. 4): z_hat = z_L - sigma_{tau_g} f_theta(z_L, tau_g, c, m).

`f_theta` is a diffusers `SanaTransformer2DModel`, optionally carrying a PEFT LoRA adapter; the frozen prior f_0
is the same module with the adapter disabled (`frozen_prior()`), never a second copy. The transformer receives
the timestep tau on the 0..1000 scale; sigma_tau comes from the flow schedule with the base model's shift.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import SanaTransformer2DModel

from sanasr_cli.models.schedule import flow_sigma


class OneStepRestorer(torch.nn.Module):
    def __init__(self, transformer: SanaTransformer2DModel, tau_g: float = 900.0, flow_shift: float = 3.0):
        super().__init__()
        self.transformer = transformer
        self.tau_g = float(tau_g)
        self.flow_shift = float(flow_shift)

    @property
    def sigma_g(self) -> float:
        """sigma_{tau_g} of Eq. 4."""
        return float(flow_sigma(self.tau_g, self.flow_shift))

    def velocity(
        self, latents: torch.Tensor, timestep: float | torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """f(z, t, c, m): the transformer's output, shape of `latents`. timestep: a float or a (B,) tensor."""
        dtype = self.transformer.dtype
        b = latents.shape[0]
        t = torch.as_tensor(timestep, device=latents.device, dtype=torch.float32).reshape(-1).expand(b)
        out = self.transformer(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            encoder_attention_mask=mask,
            timestep=t.to(dtype),
            return_dict=False,
        )[0]
        return out

    def forward(self, z_lq: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 4: one latent update from z_L at tau_g; returns z_hat in float32."""
        v = self.velocity(z_lq, self.tau_g, embeds, mask)
        return z_lq.float() - self.sigma_g * v.float()

    @contextlib.contextmanager
    def frozen_prior(self):
        """Inside this context the transformer computes f_0 (adapters disabled), when it has any."""
        has_adapter = getattr(self.transformer, "_hf_peft_config_loaded", False)
        if not has_adapter:
            yield
            return
        self.transformer.disable_adapters()
        # Gradient checkpointing would recompute this pass in backward, after the adapters are enabled again
        # (a different graph): run it without checkpointing; the other passes stay checkpointed.
        checkpointing = getattr(self.transformer, "gradient_checkpointing", False)
        self.transformer.gradient_checkpointing = False
        try:
            yield
        finally:
            self.transformer.gradient_checkpointing = checkpointing
            self.transformer.enable_adapters()
