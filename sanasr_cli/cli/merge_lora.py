"""`sanasr merge-lora MODEL_DIR -o OUT`: fold the LoRA adapter into the LinearDiT weights."""

from __future__ import annotations

from pathlib import Path

import typer

from sanasr_cli.cli import options as opt
from sanasr_cli.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    check_model_dir,
    check_model_output,
    console,
    fail,
    quiet_libraries,
)


def merge_lora(
    model_dir: Path = typer.Argument(
        ...,
        help="A model directory with an adapter/ (a checkpoint of `sanasr train`), or a training run (its newest "
        "checkpoint).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="The merged model directory to write."),
    ema: bool = typer.Option(False, "--ema", help="Merge the EMA adapter (adapter_ema/) instead of the last weights."),
    scale: float = typer.Option(1.0, "--scale", help="Adapter strength: W + scale * (alpha/r) B A (1 = as trained)."),
    base: str = opt.BASE,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
):
    """Merge MODEL_DIR's LoRA adapter into the base transformer and write OUT.

    OUT/transformer/ is a plain diffusers folder (config.json + safetensors) that
    `diffusers.SanaTransformer2DModel.from_pretrained` loads as it is; OUT/sanasr.json records the merge.
    The merged model computes what the adapted model computes (within float tolerance), without LoRA layers.
    """
    from sanasr_cli.errors import MissingWeightsError, ModelDirError
    from sanasr_cli.models.merge import check_merge_scale, merge_model
    from sanasr_cli.models.sanasr import load_model, save_model_dir

    try:
        check_merge_scale(scale)  # up front, before any loading
    except ValueError as e:
        raise fail(str(e), EXIT_USAGE) from None
    model_dir = check_model_dir(model_dir)  # a training run: its newest checkpoint
    check_model_output(output, overwrite, [model_dir])
    quiet_libraries()
    with console.status(f"loading {model_dir} ..."):
        try:
            model = load_model(model_dir, base=base, need_vae=False)  # only what it folds: no VAE, no text encoder
            record = merge_model(model, scale=scale, ema=ema)
        except ModelDirError as e:
            raise fail(str(e), EXIT_USAGE) from None
        except MissingWeightsError as e:
            raise fail(str(e), EXIT_FAILED) from None
    model.description.history.append({"command": "merge-lora", "input": str(model_dir), "ema": ema, "scale": scale})
    with console.status(f"writing {output} ..."):
        save_model_dir(model, output, overwrite=overwrite)
    console.print(f"merged {record['merged_from']}/ (scale {scale:g}) into {output}/transformer")


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("merge-lora")(one_line_errors(merge_lora))
