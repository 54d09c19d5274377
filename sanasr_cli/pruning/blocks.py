"""Parameter accounting over the LinearDiT's blocks, and removal of blocks.

The prunable units are `transformer.transformer_blocks[l]` of a diffusers `SanaTransformer2DModel`; everything
else (patch embedding, timestep and caption embedders, final norm and projection) is the fixed part P_fix of
Eq. 11. Counts are of the transformer only, as in the paper, and work on the meta device (no memory needed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sanasr_cli.models.lora import has_adapter

BLOCK_PREFIX = "transformer_blocks."


@dataclass(frozen=True)
class BlockSizes:
    """P_l of every block (index 0..L-1), P_fix, and the total."""

    block: tuple[int, ...]
    fixed: int

    @property
    def total(self) -> int:
        return self.fixed + sum(self.block)

    @property
    def num_blocks(self) -> int:
        return len(self.block)

    def kept_total(self, kept: list[int] | tuple[int, ...]) -> int:
        return self.fixed + sum(self.block[i] for i in kept)

    @property
    def minimum(self) -> int:
        """The smallest allowed model: the fixed part plus the first and last blocks (Eq. 11)."""
        ends = {0, self.num_blocks - 1}
        return self.fixed + sum(self.block[i] for i in ends)


def block_index(name: str) -> int | None:
    """'transformer_blocks.7.attn1.to_q.weight' -> 7; names outside the blocks -> None."""
    if not name.startswith(BLOCK_PREFIX):
        return None
    return int(name[len(BLOCK_PREFIX) :].split(".", 1)[0])


def block_sizes(transformer: torch.nn.Module) -> BlockSizes:
    """Parameter counts per block and for the fixed part (works on meta tensors)."""
    n_blocks = len(transformer.transformer_blocks)
    per_block = [0] * n_blocks
    fixed = 0
    for name, p in transformer.named_parameters():
        idx = block_index(name)
        if idx is None:
            fixed += p.numel()
        else:
            per_block[idx] += p.numel()
    return BlockSizes(tuple(per_block), fixed)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def remove_blocks(transformer, kept: list[int]):
    """A new plain `SanaTransformer2DModel` with only the `kept` blocks (in their original order).

    The result's config has `num_layers = len(kept)`, so `save_pretrained` writes a folder that
    `SanaTransformer2DModel.from_pretrained` loads as it is. The kept weights are the same tensors (no copy);
    meta tensors stay meta, so the real-size architecture can be pruned without memory.
    """
    from accelerate import init_empty_weights
    from diffusers import SanaTransformer2DModel

    if has_adapter(transformer):
        raise ValueError("merge the LoRA adapter before removing blocks")
    n = len(transformer.transformer_blocks)
    kept = sorted(set(kept))
    if not kept or kept[0] < 0 or kept[-1] >= n:
        raise ValueError(f"kept block indices must lie in 0..{n - 1}, got {kept}")
    config = dict(transformer.config)
    config["num_layers"] = len(kept)
    with init_empty_weights():
        pruned = SanaTransformer2DModel.from_config(config)
    new_index = {old: new for new, old in enumerate(kept)}
    state = {}
    for name, tensor in transformer.state_dict().items():
        idx = block_index(name)
        if idx is None:
            state[name] = tensor
        elif idx in new_index:
            rest = name[len(BLOCK_PREFIX) :].split(".", 1)[1]
            state[f"{BLOCK_PREFIX}{new_index[idx]}.{rest}"] = tensor
    pruned.load_state_dict(state, strict=True, assign=True)
    return pruned.eval()
