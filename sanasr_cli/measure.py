"""Measuring cost, one rule for every report (`bench`, `prune`'s MACs, the taggers' cost lines).

- `count_macs(fn)`: MACs = FLOPs / 2 of one call, counted by torch's FlopCounterMode. Run it on the META device
  (no weights, no memory): on CPU tensors FlopCounterMode misses the fused scaled-dot-product-attention kernels
  and under-counts attention.
- `sync(device)` and `timed(fn, device)`: wall-clock seconds of one call, CUDA-synchronised before and after.
- `weight_bytes(modules)`: bytes of the parameters and buffers of some modules (shared tensors counted once).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

MIB = 2**20


@torch.no_grad()
def count_macs(fn: Callable[[], object]) -> int:
    """MACs (= FLOPs / 2) of one call, counted by FlopCounterMode. Run it on meta tensors (see module doc)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops()) // 2


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA); nothing on other devices."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | str) -> float:
    """Seconds of one call of `fn`, the device synchronised before and after (queued work is not timed)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def weight_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of the parameters and buffers of `modules`, each tensor counted once."""
    seen: dict[int, torch.Tensor] = {}
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            seen[id(t)] = t
    return sum(t.numel() * t.element_size() for t in seen.values())
