"""The one-step LinearDiT restorer (Eq. 4): z_hat = z_L - sigma_{tau_g} f_theta(z_L, tau_g, c, m).

`f_theta` is a diffusers `SanaTransformer2DModel`, optionally carrying a PEFT LoRA adapter; the frozen prior f_0
is the same module with the adapter disabled (`frozen_prior()`), never a second copy. Callers speak the paper's
timestep tau (0..1000); the transformer receives `model_timestep(tau) = 1000 * sigma_tau` in float32, as SANA was
trained and as diffusers' flow-matching schedulers call it (see models/schedule.py).
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import SanaTransformer2DModel

from sanasr_cli.models.lora import has_adapter
from sanasr_cli.models.schedule import LEGACY_TIMESTEP_CONVENTION, TIMESTEP_CONVENTION, flow_sigma, model_timestep


def pad_to_patch(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """Pad (B, C, h, w) latents on the bottom/right (edge replication) to multiples of the transformer's patch;
    callers crop the output back to (h, w). Shared by the PyTorch restorer and the ONNX backend."""
    h, w = latents.shape[-2:]
    ph, pw = (-h) % patch, (-w) % patch
    if ph or pw:
        latents = torch.nn.functional.pad(latents, (0, pw, 0, ph), mode="replicate")
    return latents


class OneStepRestorer(torch.nn.Module):
    def __init__(
        self,
        transformer: SanaTransformer2DModel,
        tau_g: float = 900.0,
        flow_shift: float = 3.0,
        timestep_convention: str = TIMESTEP_CONVENTION,
    ):
        super().__init__()
        self.transformer = transformer
        self.tau_g = float(tau_g)
        self.flow_shift = float(flow_shift)
        self.timestep_convention = timestep_convention  # LEGACY: model folders trained feeding the raw tau

    @property
    def patch_size(self) -> int:
        """The transformer's patch size: latent sides are padded to multiples of it (`pad_to_patch`)."""
        return int(getattr(self.transformer.config, "patch_size", 1) or 1)

    @property
    def sigma_g(self) -> float:
        """sigma_{tau_g} of Eq. 4."""
        return float(flow_sigma(self.tau_g, self.flow_shift))

    def velocity(
        self, latents: torch.Tensor, tau: float | torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """f(z, tau, c, m): the transformer's output, shape of `latents`. tau: the paper's timestep (0..1000), a
        float or a (B,) tensor; the transformer is fed 1000 * sigma_tau."""
        dtype = self.transformer.dtype
        b = latents.shape[0]
        tau = torch.as_tensor(tau, device=latents.device, dtype=torch.float32).reshape(-1).expand(b)
        # float32 up to the model's own sinusoidal embedding (cast to bf16, 999 would become 1000)
        t = tau if self.timestep_convention == LEGACY_TIMESTEP_CONVENTION else model_timestep(tau, self.flow_shift)
        # a transformer with patch size p > 1 (nano) needs latent sides that are multiples of p: pad, then crop
        h, w = latents.shape[-2:]
        latents = pad_to_patch(latents, self.patch_size)
        out = self.transformer(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            encoder_attention_mask=mask,
            timestep=t,
            return_dict=False,
        )[0]
        return out[..., :h, :w]

    def forward(self, z_lq: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 4: one latent update from z_L at tau_g; returns z_hat in float32."""
        v = self.velocity(z_lq, self.tau_g, embeds, mask)
        return z_lq.float() - self.sigma_g * v.float()

    @contextlib.contextmanager
    def frozen_prior(self):
        """Inside this context the transformer computes f_0 (adapters disabled), when it has any."""
        if not has_adapter(self.transformer):
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
