"""The precision `--precision auto` picks, and why (a command says it in its first line).

On CUDA: bf16. On a CPU: bf16 only where the CPU computes bf16 natively (AVX512-BF16 or AMX: there it runs about
2.5x faster than fp32 for SANA-600M, issue 36) and the model's bf16 outputs were measured to agree with fp32's (the
preset's `bf16_agrees`); elsewhere fp32: a CPU without native bf16 (AVX2, plain AVX-512) converts every bf16 value
and runs bf16 slower than fp32.
"""

from __future__ import annotations

import torch


def cpu_native_bf16() -> str | None:
    """The CPU feature that computes bf16 natively (AMX, AVX512-BF16), or None (AVX2, AVX-512 without BF16, other
    architectures: bf16 is emulated there)."""
    checks = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for name, probe in checks:
        try:
            if getattr(torch.cpu, probe)():
                return name
        except (AttributeError, RuntimeError):  # an older torch or another build: not known to be there
            continue
    return None


def auto_precision(device: torch.device, bf16_agrees: bool) -> tuple[torch.dtype, str]:
    """(dtype, why) of `--precision auto` on `device` for a model whose bf16 outputs agree with fp32 (or not)."""
    if device.type == "cuda":
        return torch.bfloat16, "auto: bf16 on CUDA"
    if device.type != "cpu":
        return torch.float32, f"auto: fp32 on {device.type}"
    feature = cpu_native_bf16()
    capability = torch.backends.cpu.get_cpu_capability()
    if feature is None:
        return torch.float32, f"auto: this CPU ({capability}) has no native bf16, where bf16 runs slower than fp32"
    if not bf16_agrees:
        return torch.float32, f"auto: this CPU has native bf16 ({feature}), but this model's bf16 is not checked"
    return torch.bfloat16, f"auto: this CPU computes bf16 natively ({feature}) and this model's bf16 agrees with fp32"
