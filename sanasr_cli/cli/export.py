"""`sanasr export MODEL -o OUT`: a deployable ONNX folder (model.onnx, the stages, the contract, a model card)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from sanasr_cli.cli import options as opt
from sanasr_cli.cli.common import EXIT_FAILED, EXIT_USAGE, console, fail, newest_checkpoint_of_run, quiet_libraries


def export(
    model: str = typer.Argument(
        ...,
        help="A preset (nano, nano-fast, tiny, sana-600m-512; random-weight ones with --random-weights) or a "
        "model directory written by train / merge-lora / prune / distill.",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="The ONNX folder to write (new or empty)."),
    prompt: str = opt.prompt("The prompt baked into the graph (default: the model's quality template)."),
    quantize: str = typer.Option("none", "--quantize", help="none (fp32) or int8 (ONNX Runtime dynamic, restorer)."),
    random_weights: bool = typer.Option(False, "--random-weights", help="Build the preset with seeded random weights."),
    seed: int = opt.seed("Seed of the random weights (tiny, --random-weights)."),
    base: str = opt.BASE,
    full_vae: bool = opt.FULL_VAE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it holds an earlier export."),
    prompt_input: bool = typer.Option(
        False,
        "--prompt-input",
        help="The graph takes prompt_embeds / prompt_mask as inputs (computed with the model's text encoder, see "
        "docs/export.md) instead of baked ones; --prompt is then the default stored beside it.",
    ),
):
    """Export MODEL's one-step path to ONNX: OUT/model.onnx takes an LQ RGB image (N, 3, h, w) in [0, 1] and
    gives the x4 SR image; the prompt's embeddings are computed now and baked in.

    OUT/sanasr-onnx.json is the contract (sizes, range, prompt, opset, quantization); `sanasr upscale
    --model OUT` and `SanaSRPipeline.from_pretrained(OUT)` run it with ONNX Runtime.

    Exit code: 0 written, 2 bad MODEL or OUT (exists and is not empty, without --overwrite), 1 failed
    (e.g. the ONNX extra is not installed).
    """
    from sanasr_cli.errors import SanaSRError, UnsafeOutputError
    from sanasr_cli.export.onnx_export import QUANTIZATIONS, check_export_target, export_onnx, require_export_tools

    model = newest_checkpoint_of_run(model)  # a training run: its newest checkpoint, said
    if quantize not in QUANTIZATIONS:
        raise fail(f"--quantize takes {', '.join(QUANTIZATIONS)}, not '{quantize}'", EXIT_USAGE)
    try:
        check_export_target(output, overwrite)
    except UnsafeOutputError as e:
        raise fail(str(e), EXIT_USAGE) from None
    try:
        require_export_tools()
    except SanaSRError as e:
        raise fail(str(e), EXIT_FAILED) from None
    sr_model = _load(model, base, random_weights, seed, full_vae, prompt)
    if not hasattr(sr_model, "transformer"):
        raise fail(f"{model} is already an ONNX export", EXIT_USAGE)
    console.print(f"exporting {model} to {output} (each stage traced and translated: minutes)")
    result = export_onnx(
        sr_model, output, source=model, prompt=prompt, quantize=quantize, overwrite=overwrite,
        prompt_input=prompt_input, source_options={"random_weights": random_weights, "seed": seed, "base": base},
        on_step=_print_steps(),
        free_model=True,  # not used again here: its memory goes to the ONNX Runtime steps
    )  # fmt: skip
    _say_written(output, result, quantize, prompt_input)


def _say_written(output: Path, result, quantize: str, prompt_input: bool) -> None:
    files = result.contract["files"]
    data = sum(files.get(name, 0) for name in result.contract.get("external_data", {}).get("model.onnx", []))
    console.print(
        f"wrote {output} in {result.seconds:.0f} s: model.onnx {files['model.onnx'] / 2**20:.1f} MiB"
        + (f" + {data / 2**30:.2f} GiB of weights in its external data files" if data else "")
        + ", "
        f"quantization {quantize}, prompt "
        + ("an input" if prompt_input else f"'{result.contract['prompt']['text']}'"),
        highlight=False,
    )


def _print_steps():
    """export_onnx's on_step: a line per step with the seconds since now, also where no spinner shows (a pipe)."""
    start = time.perf_counter()

    def on_step(text: str) -> None:
        console.print(f"  {time.perf_counter() - start:4.0f} s  {text}", highlight=False)

    return on_step


def _load(model: str, base, random_weights: bool, seed: int, full_vae: bool, prompt: str | None):
    """The model to export, fp32 on the CPU, its prompt encoded first by the text encoder alone (then freed); a bad
    MODEL is one line and exit 2, missing weights exit 1."""
    import torch

    from sanasr_cli.errors import MissingWeightsError, ModelDirError
    from sanasr_cli.export.contract import is_onnx_dir
    from sanasr_cli.export.onnx_export import export_prompt
    from sanasr_cli.models.sanasr import load_model, resolve_model

    quiet_libraries()
    with console.status(f"loading {model} ..."):
        try:
            if is_onnx_dir(model):
                raise fail(f"{model} is already an ONNX export", EXIT_USAGE)
            description = resolve_model(model, base=base, random_weights=random_weights, seed=seed)[0]
            return load_model(
                model, device="cpu", dtype=torch.float32, base=base, random_weights=random_weights, seed=seed,
                full_vae=full_vae, prompts=[export_prompt(description.prompt, prompt)],
            )  # fmt: skip
        except ModelDirError as e:
            raise fail(str(e), EXIT_USAGE) from None
        except MissingWeightsError as e:
            raise fail(str(e), EXIT_FAILED) from None


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("export")(one_line_errors(export))
