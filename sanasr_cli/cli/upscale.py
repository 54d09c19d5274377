"""`sanasr upscale INPUT -o OUTDIR`: super-resolve an image or a folder of images."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sanasr_cli.cli import prompt_options as po
from sanasr_cli.cli.common import EXIT_FAILED, EXIT_USAGE, console, fail, quiet_libraries, resolve_device, resolve_precision


def upscale(
    input: Path = typer.Argument(..., help="An image file or a folder of images (png, jpg, webp, tif, bmp)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the results, written as <stem>.png."),
    model: str = typer.Option(
        "sana-600m-512",
        "--model",
        "-m",
        help="A preset (sana-600m-512, tiny) or a model directory written by train / merge-lora / prune.",
    ),
    base: str = typer.Option(
        None, "--base", help="Hub id or local folder of the pretrained SANA base (default: $SANASR_BASE or the hub)."
    ),
    scale: float = typer.Option(4.0, "--scale", "-s", min=1.0, help="Output size = scale x input size."),
    tagger: str = po.TAGGER,
    tagger_weights: Path = po.TAGGER_WEIGHTS,
    tagger_model: str = po.TAGGER_MODEL,
    tag_vocab: Path = po.TAG_VOCAB,
    template: str = po.TEMPLATE,
    tag_cache: str = po.TAG_CACHE,
    prompt: str = typer.Option(None, "--prompt", help="Extra words put before the tags and the quality template."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA, fp32 on CPU), fp32, fp16, bf16."),
    seed: int = typer.Option(0, "--seed", help="Seed of random-weight presets (tiny); inference itself is deterministic."),
):
    """Super-resolve INPUT (a file or a folder) into OUTDIR.

    The low-quality image is upsampled bicubically to the target size, encoded by the DC-AE, restored by one
    LinearDiT step (Eq. 4) and decoded. Exit code: 0 when every image succeeded, 1 when any failed (the others
    still run), 2 for usage errors.
    """
    from sanasr_cli.data.io import list_images
    from sanasr_cli.errors import MissingWeightsError, ModelDirError
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pipeline.upscale import UpscaleOptions, upscale_files
    from sanasr_cli.prompts.taggers import TAGGERS

    if not input.exists():
        raise fail(f"input {input} does not exist", EXIT_USAGE)
    if tagger is not None and tagger not in TAGGERS:
        raise fail(f"unknown tagger '{tagger}'; known: {', '.join(sorted(TAGGERS))}", EXIT_USAGE)
    images = list_images(input)
    if not images:
        raise fail(f"no images found in {input}", EXIT_USAGE)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)

    quiet_libraries()
    with console.status(f"loading model {model} on {dev} ..."):
        try:
            sr_model = load_model(model, device=dev, dtype=dtype, base=base, seed=seed)
        except ModelDirError as e:
            raise fail(str(e), EXIT_USAGE)
        except MissingWeightsError as e:
            raise fail(str(e), EXIT_FAILED)
    if sr_model.description.random_weights:
        console.print(f"[yellow]note:[/] '{model}' has random (untrained) weights: outputs show the pipeline, not SR quality.")
    rule = po.asked_prompt_rule(sr_model.description.prompt, tagger, tagger_weights, tagger_model, tag_vocab, template,
                                warn=sr_model.source_dir is not None)  # presets were trained with no rule
    options = UpscaleOptions(scale=scale, prompt_rule=rule, user_prompt=prompt,
                             tagger=po.build_tagger(rule, dev, tag_cache))
    po.pretag(options.tagger, images)

    progress = Progress(
        TextColumn("[bold]upscale"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        TextColumn("{task.description}"), console=console,
    )
    with progress:
        task = progress.add_task("", total=len(images))

        def on_done(rec):
            if rec.status != "ok":
                progress.console.print(f"[red]failed:[/] {rec.error}", highlight=False, soft_wrap=True)
            progress.update(task, advance=1, description=Path(rec.input).name)

        records = upscale_files(sr_model, images, input, output, options, on_done=on_done)
    failed = [r for r in records if r.status != "ok"]
    console.print(f"{len(records) - len(failed)} of {len(records)} images written to {output}" +
                  (f", [red]{len(failed)} failed[/]" if failed else ""))
    if failed:
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("upscale")(upscale)
