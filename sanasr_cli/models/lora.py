"""LoRA on the LinearDiT through PEFT (App. A.2, B): add, save as a PEFT folder, load back.

The adapter folder is what `peft.PeftModel.from_pretrained(transformer, folder)` reads: `adapter_config.json` +
`adapter_model.safetensors` with keys prefixed `base_model.model.`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from sanasr_cli.safe_files import atomic_write

if TYPE_CHECKING:  # peft is imported where an adapter is built or read: it costs seconds, and upscaling a model
    from peft import LoraConfig  # without an adapter (nano, a merged one) never needs it

# Paper App. B: attention projections of self- and cross-attention.
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
# Optional FFN convs of SANA's GLUMBConv (--lora-targets attn+ffn): the two pointwise (1x1) convs. The
# depthwise `conv_depth` (groups = channels) is left out: PEFT's LoRA on a grouped conv needs the rank
# divisible by the groups, which no useful rank is (5760 groups in SANA-600M).
FFN_LORA_TARGETS: tuple[str, ...] = ("conv_inverted", "conv_point")
ADAPTER_NAME = "default"
# Model-directory subfolders: the trained adapter, and its exponential moving average (same config, written by
# `train` when EMA is on; `merge-lora --ema` merges it instead).
ADAPTER_DIR = "adapter"
EMA_ADAPTER_DIR = "adapter_ema"
_PEFT_PREFIX = "base_model.model."


def has_adapter(transformer: torch.nn.Module) -> bool:
    """Whether the transformer carries a LoRA adapter. Both attributes: diffusers < 0.35's `unload_lora` drops
    `peft_config` but leaves `_hf_peft_config_loaded` set (found by .ci/oldest)."""
    return bool(getattr(transformer, "_hf_peft_config_loaded", False) and getattr(transformer, "peft_config", None))


def lora_config(rank: int = 64, alpha: float = 64, dropout: float = 0.0, targets=DEFAULT_LORA_TARGETS) -> LoraConfig:
    from peft import LoraConfig

    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), init_lora_weights=True
    )


def add_lora(transformer: torch.nn.Module, config: LoraConfig) -> None:
    """Inject a LoRA adapter; base weights are frozen, only lora_A / lora_B train."""
    transformer.requires_grad_(False)
    transformer.add_adapter(config, adapter_name=ADAPTER_NAME)


def lora_parameters(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in transformer.named_parameters() if "lora_" in n]


def save_adapter(transformer: torch.nn.Module, folder: str | Path) -> None:
    """Write a PEFT adapter folder (config + safetensors)."""
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config: LoraConfig = transformer.peft_config[ADAPTER_NAME]
    config.save_pretrained(str(folder))
    state = get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME)
    state = {_PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()}
    # serialised in memory and written by safe_files: a full disk is an OSError (safetensors' save_file raises
    # its own error type) and the file gets the usual permissions (save_file makes it 0600)
    atomic_write(folder / "adapter_model.safetensors", safetensors_bytes(state))


def load_adapter(transformer: torch.nn.Module, folder: str | Path) -> LoraConfig:
    """Add the adapter stored in a PEFT folder to `transformer` and load its weights."""
    from peft import LoraConfig

    from sanasr_cli.models.folder_check import check_adapter_config

    folder = Path(folder)
    check_adapter_config(folder, str(folder))  # numbers and rank capped by the file before PEFT builds layers
    config = LoraConfig.from_pretrained(str(folder))
    add_lora(transformer, config)
    load_adapter_weights(transformer, folder)
    return config


def load_adapter_weights(transformer: torch.nn.Module, folder: str | Path) -> None:
    """Load a PEFT folder's weights into the adapter already on `transformer` (e.g. the EMA of the same adapter)."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    from sanasr_cli.models.folder_check import check_adapter_fit, check_finite

    folder = Path(folder)
    path = folder / "adapter_model.safetensors"
    # every key the adapter on the transformer has, of its shape, and nothing else (a partial EMA adapter would
    # mix EMA and trained weights), read from the header before any tensor; then every value finite
    expected = {_PEFT_PREFIX + k: tuple(v.shape) for k, v in get_peft_model_state_dict(transformer).items()}
    check_adapter_fit(expected, path, str(folder))
    state = load_file(str(path))
    check_finite(state, str(folder))
    state = {k.removeprefix(_PEFT_PREFIX): v for k, v in state.items()}
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"adapter in {folder} does not fit this transformer: unexpected keys {unexpected[:3]}...")
