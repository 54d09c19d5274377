"""Helpers shared by subcommands: device and precision choice, console output, error reporting."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:  # torch is imported where a command runs, so that `sanasr --help` answers at once
    import torch

console = Console(stderr=True)

PRECISIONS = ("fp32", "fp16", "bf16")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch understands it."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise fail(f"--device: unknown device '{device}' (use auto, cpu, cuda, cuda:N)", EXIT_USAGE) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise fail(f"--device {device}: no CUDA GPU is available (use --device cpu or auto)", EXIT_USAGE)
    return dev


def resolve_precision(precision: str, device: torch.device, bf16_agrees: bool = False) -> torch.dtype:
    """'auto' -> bf16 on CUDA; on a CPU bf16 only with native bf16 and a model whose bf16 agrees, else fp32."""
    return precision_choice(precision, device, bf16_agrees)[0]


def precision_choice(precision: str, device: torch.device, bf16_agrees: bool = False) -> tuple[torch.dtype, str]:
    """(dtype, why): `--precision` as given, or what auto picks on `device` (models/precision.py)."""
    import torch

    from sanasr_cli.models.precision import auto_precision

    if precision == "auto":
        return auto_precision(device, bf16_agrees)
    if precision not in PRECISIONS:
        raise fail(f"--precision: use one of auto, {', '.join(PRECISIONS)}, not '{precision}'", EXIT_USAGE)
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision], "--precision"


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print one clear error line and return the Exit to raise. The message is text, never rich markup (an
    extra's name like `sanasr[onnx]` would be swallowed as a style tag)."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def quiet_libraries() -> None:
    """Keep library chatter (progress bars of loaders, advisory warnings) out of the user's terminal."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    # diffusers passes huggingface_hub an argument it has deprecated: advice for diffusers, not for the user
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    # a streamed text encoder (models/streamed_encoder.py) is dispatched by accelerate, which says where it put what
    logging.getLogger("accelerate.big_modeling").setLevel(logging.ERROR)


def one_line_warnings() -> None:
    """sanasr's own warnings (DatasetWarning: a skipped photo, a small one) as one `warning: ...` line, without
    Python's file:line prefix and source echo; any other warning as Python shows it."""
    import sys
    import warnings

    if getattr(warnings.showwarning, "_sanasr", False):
        return
    python_way = warnings.showwarning
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if not category.__module__.startswith("sanasr_cli"):
            return python_way(message, category, filename, lineno, file, line)
        text = " ".join(str(message).split())
        if text in shown:  # a file met twice (e.g. by two data passes) is still one line
            return
        shown.add(text)
        stream = file or sys.stderr
        try:
            stream.write(f"warning: {text}\n")
        except OSError:  # a closed stderr: a warning is not worth a crash
            pass

    show._sanasr = True
    warnings.showwarning = show


def newest_checkpoint_of_run(spec):
    """A training run folder (as the docs pass `runs/sr`) -> its newest checkpoint, said in one line; any other
    model spec (a preset, a model directory) as it is."""
    from sanasr_cli.models.description import newest_checkpoint

    if spec is None or not isinstance(spec, (str, Path)):
        return spec
    found = newest_checkpoint(Path(spec).expanduser())
    if found is None:
        return spec
    console.print(f"{spec} is a training run: using its newest checkpoint, {found}", highlight=False, soft_wrap=True)
    return type(spec)(found) if isinstance(spec, Path) else str(found)


def skip_the_collection_at_exit() -> None:
    """Called first by the `sanasr` process: at its exit, after every atexit handler (this one, registered first, runs
    last), the objects left are frozen (`gc.freeze`), so the interpreter's shutdown does not walk the ~500 000 objects
    that torch, diffusers and transformers create in full garbage collections: about 1 s of CPU on a 2-core EPYC
    (docs/upscale.md, Start-up time). Modules are still torn down and every atexit handler runs (logging's flush,
    weakref.finalize, tempfile); what is skipped is collecting reference cycles still alive at exit, whose
    finalizers Python never promises to run (sanasr closes what it writes)."""
    import atexit
    import gc

    atexit.register(gc.freeze)


def skip_peft_unless_an_adapter(model: str | None) -> None:
    """Called first by a command that loads this one model (upscale, eval --model): when it has no LoRA adapter,
    peft is marked as not installed for the process (None in sys.modules, as sanasr_cli/__init__ does for
    bitsandbytes). diffusers imports peft (a second of start-up) whenever it is installed, to wrap adapter layers
    that such a model does not have. Only before diffusers is first imported, and never for a model with an
    adapter: the PEFT backend that diffusers sets up at its import then stays as it is."""
    import sys

    if model is None or "diffusers" in sys.modules or "peft" in sys.modules:
        return
    from sanasr_cli.models.description import loads_an_adapter

    if not loads_an_adapter(model):
        sys.modules["peft"] = None


def load_model_or_fail(
    spec: str,
    device: torch.device,
    dtype: torch.dtype,
    base=None,
    seed: int = 0,
    status: str | None = None,
    full_vae: bool = False,
    vae_decoder: str | None = None,
    random_weights: bool = False,
    prompts: list[str] | None = None,
    reuse_prefix: tuple[bool, ...] = (True,),
):
    """load_model behind a spinner (`status`, None: no spinner, e.g. on other processes); a bad model directory
    is one line and exit 2, missing weights one line and exit 1. prompts: the run's, encoded first
    (`load_model`)."""
    import contextlib

    from sanasr_cli.errors import MissingWeightsError, ModelDirError
    from sanasr_cli.models.sanasr import load_model

    spec = newest_checkpoint_of_run(spec)
    with console.status(status) if status else contextlib.nullcontext():
        try:
            return load_model(
                spec, device=device, dtype=dtype, base=base, seed=seed, full_vae=full_vae, vae_decoder=vae_decoder,
                random_weights=random_weights, prompts=prompts, reuse_prefix=reuse_prefix,
            )  # fmt: skip
        except ModelDirError as e:
            raise fail(str(e), EXIT_USAGE) from None
        except MissingWeightsError as e:
            raise fail(str(e), EXIT_FAILED) from None


def describe_model_or_fail(spec: str, base=None, seed: int = 0):
    """(description, folder or None) of a preset or model directory from its files alone (no weights read: what it
    records, e.g. its prompt rule, known before loading it); (None, None) for an ONNX export; exit 2 when bad."""
    from sanasr_cli.errors import ModelDirError
    from sanasr_cli.export.contract import is_onnx_dir
    from sanasr_cli.models.sanasr import resolve_model

    if is_onnx_dir(spec):
        return None, None
    try:
        return resolve_model(spec, base=base, seed=seed)
    except ModelDirError as e:
        raise fail(str(e), EXIT_USAGE) from None


def check_model_output(output: Path, overwrite: bool, inputs: list[Path]) -> None:
    """The OUT of merge-lora / prune: new, or (with --overwrite) a model directory sanasr wrote that holds no
    input; anything else is refused with one line (exit 2) before any work."""
    from sanasr_cli.errors import SanaSRError
    from sanasr_cli.safe_files import check_replaceable_dir

    for inp in inputs:
        if output.resolve() == Path(inp).resolve():
            raise fail("OUT must differ from MODEL_DIR (the input is never overwritten)", EXIT_USAGE)
    if not (output.exists() or output.is_symlink()):
        return
    if not overwrite:
        raise fail(f"{output} already exists (pass --overwrite to replace it)", EXIT_USAGE)
    try:
        check_replaceable_dir(output, inputs)
    except SanaSRError as e:
        raise fail(str(e), EXIT_USAGE) from None


def one_line_errors(command):
    """Wrap a subcommand so nothing escapes as a traceback: an error it did not turn into its own message
    still ends as one line and an exit code (2 for bad input or a refused write, 1 otherwise)."""
    import click

    @functools.wraps(command)
    def guarded(*args, **kwargs):
        from sanasr_cli.errors import (
            DatasetError,
            ImageReadError,
            LaunchError,
            ModelDirError,
            SanaSRError,
            UnsafeOutputError,
        )
        from sanasr_cli.safe_files import run_inputs

        try:
            with run_inputs():  # what the run reads is never what it writes (safe_files.atomic_write checks)
                return command(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except (ModelDirError, DatasetError, ImageReadError, UnsafeOutputError, LaunchError) as e:
            raise fail(str(e), EXIT_USAGE) from None
        except SanaSRError as e:
            raise fail(str(e), EXIT_FAILED) from None
        except OSError as e:  # a full disk, a vanished folder, a permission: name the file, no traceback
            where = f"{e.filename}: " if e.filename else ""
            raise fail(f"{where}{e.strerror or e}", EXIT_FAILED) from None
        except Exception as e:  # noqa: BLE001 - the last net: a bug, said so in one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise fail(
                f"unexpected {type(e).__name__}{': ' + first if first else ''} (this is a bug in sanasr; "
                "please report it with the command line)",
                EXIT_FAILED,
            ) from None

    return guarded


def check_model_dir(model_dir: Path) -> Path:
    """Usage errors for a MODEL_DIR that is missing, not a model directory, or lacks its weights; returns the
    model directory (a training run's newest checkpoint for a run folder)."""
    from sanasr_cli.errors import ModelDirError
    from sanasr_cli.models.sanasr import model_dir_problem

    model_dir = newest_checkpoint_of_run(Path(model_dir))
    if not model_dir.is_dir():
        raise fail(f"model directory {model_dir} does not exist", EXIT_USAGE)
    try:
        problem = model_dir_problem(model_dir)
    except ModelDirError as e:
        problem = str(e)
    if problem:
        raise fail(problem, EXIT_USAGE)
    return model_dir


def check_report_paths(*flags: tuple[str, str | Path | None]) -> None:
    """Exit 2 now when a report file (--json, --csv, --report, --plot) could not be written at the end."""
    from sanasr_cli.errors import SanaSRError
    from sanasr_cli.safe_files import check_output_file

    try:
        for flag, path in flags:
            check_output_file(path, flag)
    except SanaSRError as e:
        raise fail(str(e), EXIT_USAGE) from None
