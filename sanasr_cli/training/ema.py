"""Exponential moving average of the LoRA weights (App. B: decay 0.999).

Only the adapter trains, so the shadow copy is as small as the adapter (a few MB), kept in float32 on the
parameters' device. `swapped_in()` puts the EMA weights into the live parameters for saving or validation and
restores the trained weights afterwards. Written here rather than taken from diffusers' `EMAModel` because
that class tracks whole modules and pickles its state; this one saves through the PEFT adapter format.
"""

from __future__ import annotations

import contextlib

import torch


class LoraEMA:
    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], decay: float = 0.999):
        self.decay = float(decay)
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * param, after each optimizer step."""
        for s, p in zip(self.shadow, self.params, strict=False):
            s.lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: s.detach().cpu().contiguous() for n, s in zip(self.names, self.shadow, strict=False)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} LoRA weights (first: {missing[0]})")
        for n, s in zip(self.names, self.shadow, strict=False):
            s.copy_(state[n].to(s.device, s.dtype))

    @contextlib.contextmanager
    def swapped_in(self):
        """Within the context the live LoRA parameters hold the EMA weights."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=False):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup, strict=False):
                    p.copy_(b)
