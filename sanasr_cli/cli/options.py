"""Options every command shares, declared once (flag, default, usual help), and the one progress-bar factory.

    device: str = options.device("auto, cpu, cuda, cuda:N (model and metrics).")
    seed: int = options.SEED

A command passes its own help when the option means something particular to it (e.g. what `--seed` seeds);
the flag name and the default stay the ones declared here. Prompt-rule options are in `prompt_options`.
"""

from __future__ import annotations

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sanasr_cli.cli.common import console

DEVICE_HELP = "auto, cpu, cuda, cuda:N."
PRECISION_HELP = (
    "auto (bf16 on CUDA; on a CPU bf16 where it computes bf16 natively and the model's bf16 was checked, else fp32), "
    "fp32, fp16, bf16."
)
BASE_HELP = "Hub id or local folder of the SANA base, if not the recorded one."
SEED_HELP = "Seed of random-weight presets (tiny)."
PROMPT_HELP = "Extra words put before the tags and the quality template."
FULL_VAE_HELP = (
    "Ignore the model's distilled VAE students (encoder/, decoder/ from `sanasr distill`) and run the teacher DC-AE."
)


def device(help: str = DEVICE_HELP, default: str = "auto", **kwargs):
    return typer.Option(default, "--device", help=help, **kwargs)


def precision(help: str = PRECISION_HELP, default: str = "auto", **kwargs):
    return typer.Option(default, "--precision", help=help, **kwargs)


def base(help: str = BASE_HELP, **kwargs):
    return typer.Option(None, "--base", help=help, **kwargs)


MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit; torch.manual_seed overflows past 2^64


def _check_seed(value: int | None) -> int | None:
    """--seed in range, checked as the flags are read (exit 2), before any model is built."""
    if value is not None and not 0 <= value <= MAX_SEED:
        from sanasr_cli.cli.common import EXIT_USAGE, fail

        raise fail(f"--seed must be from 0 to 2^32 - 1, not {value}", EXIT_USAGE)
    return value


def seed(help: str = SEED_HELP, default: int = 0, **kwargs):
    return typer.Option(default, "--seed", help=help, callback=_check_seed, **kwargs)


def prompt(help: str = PROMPT_HELP):
    return typer.Option(None, "--prompt", help=help, rich_help_panel="Prompt")


def full_vae(help: str = FULL_VAE_HELP):
    return typer.Option(False, "--full-vae", help=help)


DEVICE, PRECISION, BASE, SEED, PROMPT, FULL_VAE = device(), precision(), base(), seed(), prompt(), full_vae()

VAE_DECODER = typer.Option(
    None,
    "--vae-decoder",
    help="The VAE decoder: full (the base DC-AE's), lite (DC-AE-Lite's ResBlock-only decoder, same latent space: "
    "from vae_lite/ in a local base folder, else mit-han-lab/dc-ae-lite-f32c32-sana-1.1-diffusers from the "
    "Hugging Face cache; random for random-weight presets) or a local AutoencoderDC folder. Default: what the "
    "model records (full). Lite's gain is mostly GPU wall time: 939 vs 1046 GMACs at 512x512. A model with a "
    "distilled decoder student (nano-fast) decodes with the student: add --full-vae to choose the VAE's decoder.",
)
KEEP_TEXT_ENCODER = typer.Option(
    False,
    "--keep-text-encoder",
    help="Keep the text encoder in memory while restoring. By default every prompt of the run is encoded first "
    "(kept in a disk cache: a prompt encoded before needs no encoder) and the encoder (SANA's Gemma-2, 10.5 GB in "
    "fp32, 5.2 GB in bf16) is then freed, on the CPU as on a GPU: lower peak memory, same outputs.",
)


def progress_bar(
    label: str, *, show: bool = True, remaining: bool = False, description: bool = True, transient: bool = False
) -> Progress:
    """The bar of every command: `label`, bar, done/total, elapsed (and remaining), the task's description."""
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if remaining:
        columns.append(TimeRemainingColumn())
    if description:
        columns.append(TextColumn("{task.description}"))
    return Progress(*columns, console=console, disable=not show, transient=transient)
