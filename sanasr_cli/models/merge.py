"""Merging the LoRA adapter into the LinearDiT (App. A.7 step 1; `sanasr merge-lora`).

PEFT does the arithmetic (diffusers' `fuse_lora` calls each LoRA layer's `merge`, W <- W + s * (alpha/r) B A),
then `unload_lora` puts the plain base layers back, so the transformer is again a plain
`SanaTransformer2DModel` whose `save_pretrained` folder `from_pretrained` loads as it is.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sanasr_cli.errors import ModelDirError
from sanasr_cli.models.lora import EMA_ADAPTER_DIR, has_adapter, load_adapter_weights


def merge_adapter(transformer: torch.nn.Module, scale: float = 1.0) -> None:
    """Fold the active adapter into the base weights in place (times `scale`), then drop the LoRA layers."""
    if not has_adapter(transformer):
        raise ValueError("the transformer has no LoRA adapter to merge")
    check_merge_scale(scale)
    transformer.fuse_lora(lora_scale=float(scale), safe_fusing=True)  # safe: refuses to write NaN weights
    transformer.unload_lora()


def check_merge_scale(scale: float) -> float:
    """ValueError unless `scale` is a finite number (a NaN scale would merge NaN into every adapted weight)."""
    import math

    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"--scale must be a finite number, not {scale!r}")
    return float(scale)


def ema_adapter_dir(model_dir: str | Path) -> Path | None:
    """The EMA adapter folder of a model directory, when `train` wrote one."""
    folder = Path(model_dir) / EMA_ADAPTER_DIR
    return folder if (folder / "adapter_model.safetensors").is_file() else None


def merge_model(model, scale: float = 1.0, ema: bool = False) -> dict:
    """Merge the adapter of a loaded SanaSR (the EMA weights when `ema`), updating its description.

    Returns the record stored in the description's `lora` field. Raises ModelDirError when there is nothing to
    merge or no EMA adapter.
    """
    desc = model.description
    if not has_adapter(model.transformer):
        raise ModelDirError(
            f"{model.source_dir or desc.base_preset}: no LoRA adapter to merge (the transformer is already plain)"
        )
    source = desc.adapter
    if ema:
        folder = ema_adapter_dir(model.source_dir) if model.source_dir else None
        if folder is None:
            raise ModelDirError(f"{model.source_dir}: no EMA adapter ({EMA_ADAPTER_DIR}/) to merge; drop --ema")
        load_adapter_weights(model.transformer, folder)
        source = EMA_ADAPTER_DIR
    merge_adapter(model.transformer, scale)
    model.transformer.eval().requires_grad_(False)
    record = {**(desc.lora or {}), "merged": True, "merged_from": source, "scale": float(scale)}
    desc.lora, desc.adapter = record, None
    return record
