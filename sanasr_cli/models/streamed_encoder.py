"""A large text encoder run on a CPU without holding its weights: streamed from its own safetensors files.

On a CPU the text encoder (Gemma-2 2B in SANA: 10.5 GB in float32) is the largest part of a run and is needed only
to encode the prompts. Loaded with accelerate's disk offload over the checkpoint's own files (transformers maps each
offloaded weight to where it lies in its `.safetensors` file: nothing is copied), each layer's weights are read just
before it runs and dropped after, so the encoder costs about its largest single weight in memory (Gemma-2's token
embedding, 2.4 GB) instead of all of them. The numbers are the same (the same weights, the same float32 ops); the
price is that each forward reads the weights again (from the page cache after the first).
"""

from __future__ import annotations

import torch

# A pretrained text encoder with more bytes of weights than this, run on a CPU, is streamed (tests lower it)
STREAM_ABOVE_BYTES = 1 << 30
# A top-level part of the encoder with less than this share of its weights stays in memory (norms, rotary tables):
# accelerate needs some part on the execution device, and reading tiny parts from disk per forward gains nothing
_KEEP_IN_MEMORY_BELOW_SHARE = 0.05


def _part_bytes(config, dtype: torch.dtype) -> dict[str, int]:
    """Bytes of weights in each top-level part of the model `config` describes, in `dtype` (built on the meta
    device: no memory, no weights read)."""
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    size = torch.empty((), dtype=dtype).element_size()
    return {name: sum(p.numel() for p in child.parameters()) * size for name, child in model.named_children()}


def streaming_device_map(config, dtype: torch.dtype, device: torch.device | str | None) -> dict[str, str] | None:
    """transformers' `device_map` that streams the encoder of `config`, read in `dtype` to run on `device` (None:
    the CPU): its large top-level parts from "disk" (their files), the small ones on the CPU. None: it is loaded
    whole (on an accelerator, or with at most STREAM_ABOVE_BYTES of weights)."""
    if device is not None and torch.device(device).type != "cpu":
        return None
    parts = _part_bytes(config, dtype)
    total = sum(parts.values())
    if total <= STREAM_ABOVE_BYTES:
        return None
    return {name: "disk" if n / total >= _KEEP_IN_MEMORY_BELOW_SHARE else "cpu" for name, n in parts.items()}


def is_streamed(module: torch.nn.Module) -> bool:
    """Whether `module` was loaded streaming (its offloaded weights live on the meta device between forwards)."""
    return "disk" in (getattr(module, "hf_device_map", None) or {}).values()
