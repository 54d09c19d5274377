"""Multiply-accumulates of one LinearDiT forward, counted with torch's FlopCounterMode on the meta device.

Counting on the meta device needs no weights or memory and sees every matmul: on CPU tensors FlopCounterMode
misses the fused scaled-dot-product-attention kernels and under-counts cross-attention. MACs = FLOPs / 2.
"""

from __future__ import annotations

import torch


def transformer_macs(config: dict, latent_height: int, latent_width: int, text_length: int, batch: int = 1) -> int:
    """MACs of one forward of a `SanaTransformer2DModel` built from `config` (a dict or a FrozenDict).

    Inputs: latents (batch, in_channels, latent_height, latent_width), caption embeddings (batch, text_length,
    caption_channels) with a full mask, one timestep per sample.
    """
    from diffusers import SanaTransformer2DModel

    from sanasr_cli.measure import count_macs  # one counting rule for bench and prune reports

    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = SanaTransformer2DModel.from_config(cfg).eval()
        latents = torch.empty(batch, cfg["in_channels"], latent_height, latent_width)
        text = torch.empty(batch, text_length, cfg["caption_channels"])
        mask = torch.ones(batch, text_length)
        timestep = torch.full((batch,), 1000 * 2.7 / 2.8)  # 1000 sigma(tau_g = 900); MACs do not depend on it
    with torch.no_grad():
        return count_macs(
            lambda: model(
                hidden_states=latents,
                encoder_hidden_states=text,
                encoder_attention_mask=mask,
                timestep=timestep,
                return_dict=False,
            )
        )
