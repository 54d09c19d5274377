"""Helpers shared by subcommands: device and precision choice, console output, error reporting."""

from __future__ import annotations

import os

import torch
import typer
from rich.console import Console

console = Console(stderr=True)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise typer.BadParameter(
            f"unknown device '{device}' (use auto, cpu, cuda, cuda:N)", param_hint="--device"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("CUDA was asked for but no CUDA GPU is available", param_hint="--device")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on CUDA, fp32 on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision not in PRECISIONS:
        raise typer.BadParameter(f"use one of auto, {', '.join(PRECISIONS)}", param_hint="--precision")
    return PRECISIONS[precision]


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print one clear error line and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def quiet_libraries() -> None:
    """Keep library chatter (progress bars of loaders, advisory warnings) out of the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
