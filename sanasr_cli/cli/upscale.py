"""`sanasr upscale INPUT -o OUTDIR`: super-resolve an image or a folder of images."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import typer

from sanasr_cli.cli import prompt_options as po
from sanasr_cli.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    check_report_paths,
    console,
    fail,
    full_vae_option,
    quiet_libraries,
    resolve_device,
    resolve_precision,
)

EXIT_INTERRUPTED = 130


def upscale(
    input: Path = typer.Argument(
        ..., help="An image file or a folder of images (png, jpg, webp, tif, bmp, gif: first frame)."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the results (never inside INPUT)."),
    model: str = typer.Option(
        "sana-600m-512",
        "--model",
        "-m",
        help="A preset (sana-600m-512, tiny) or a model directory written by train / merge-lora / prune.",
    ),
    base: str = typer.Option(
        None, "--base", help="Hub id or local folder of the SANA base (default: $SANASR_BASE or the hub)."
    ),
    scale: float = typer.Option(
        4.0,
        "--scale",
        "-s",
        min=1.0,
        help="Output size = round(scale x input size). The model runs at x4; other scales resize its result.",
    ),
    tile: str = typer.Option(
        "auto",
        "--tile",
        help="auto (plan from free GPU memory; whole image on CPU unless huge), none, or a tile size in "
        "pixels "
        "of the x4 image (e.g. 512). Out of memory halves the tile and retries.",
    ),
    color_fix: str = typer.Option(
        "wavelet",
        "--color-fix",
        help="wavelet (default: low frequencies from the bicubic input, detail from the model), adain "
        "(global per-channel mean/std), none (the paper's pipeline, the default of `sanasr eval --model` "
        "and of prune's --validate gate).",
    ),
    ext: str = typer.Option(
        "png",
        "--ext",
        help="png (default: lossless, keeps 16-bit and alpha), auto (the input's format), jpg, webp, tif. "
        "Images with transparency are written as PNG when the format cannot hold it.",
    ),
    suffix: str = typer.Option("", "--suffix", help="Added to output names: photo.jpg -> photo<suffix>.png."),
    recursive: bool = typer.Option(
        False, "--recursive", "-r", help="Include sub-folders (mirrored in OUTDIR)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo finished outputs (default: skip them, so a rerun resumes)."
    ),
    report: Path = typer.Option(
        None, "--report", help="Write a JSON report, one record per input (e.g. run.json)."
    ),
    batch_size: int = typer.Option(
        1, "--batch-size", min=1, help="Tiles, or untiled images of one size, per step."
    ),
    shard: str = typer.Option(
        None, "--shard", help="i/n: do only the i-th of n equal shares (cluster job arrays)."
    ),
    max_pixels: float = typer.Option(
        64.0,
        "--max-pixels",
        min=0.0,
        help="Refuse inputs above this many megapixels (decompression-bomb guard).",
    ),
    save_prompts: bool = typer.Option(
        False,
        "--save-prompts",
        help="Write each image's tags to <output stem>.txt (readable by --tagger file).",
    ),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG / WebP quality."),
    tagger: str = po.TAGGER,
    tagger_weights: Path = po.TAGGER_WEIGHTS,
    tagger_model: str = po.TAGGER_MODEL,
    tag_vocab: Path = po.TAG_VOCAB,
    template: str = po.TEMPLATE,
    tag_cache: str = po.TAG_CACHE,
    prompt: str = typer.Option(
        None,
        "--prompt",
        help="Extra words put before the tags and the quality template.",
        rich_help_panel="Prompt",
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto, cpu, cuda, cuda:N (under accelerate: its device)."
    ),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (bf16 on CUDA, fp32 on CPU), fp32, fp16, bf16."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of random-weight presets (tiny); inference is deterministic."
    ),
    full_vae: bool = full_vae_option(),
):
    """Super-resolve INPUT (a file or a folder) into OUTDIR.

    The image is upsampled bicubically x4, encoded by the DC-AE, restored by one
    LinearDiT step (Eq. 4), decoded, colour-fixed and resized to the asked scale.
    Large images are tiled in latent space.

    Finished outputs are skipped, so rerunning an interrupted command resumes it.
    Under `accelerate launch` the files are split across processes.

    Exit code: 0 when every image succeeded (or was already done), 1 when any
    failed (after all others ran), 2 for usage errors, 130 when interrupted.
    """
    from sanasr_cli.data.io import list_inputs
    from sanasr_cli.errors import MissingWeightsError, ModelDirError, SanaSRError
    from sanasr_cli.pipeline.color import COLOR_FIXES
    from sanasr_cli.pipeline.tiling import parse_tile
    from sanasr_cli.pipeline.upscale import EXTENSIONS, parse_shard
    from sanasr_cli.prompts.taggers import TAGGERS
    from sanasr_cli.safe_files import check_name_part

    # 1. check the arguments before anything slow
    if not input.exists():
        raise fail(f"input {input} does not exist", EXIT_USAGE)
    for flag, value in (("--scale", scale), ("--max-pixels", max_pixels)):
        if not math.isfinite(value):
            raise fail(f"{flag} must be a finite number, not {value}", EXIT_USAGE)
    try:
        check_name_part(suffix, "--suffix")
    except SanaSRError as e:
        raise fail(str(e), EXIT_USAGE) from None
    check_report_paths(("--report", report))
    if tagger is not None and tagger not in TAGGERS:
        raise fail(f"unknown tagger '{tagger}'; known: {', '.join(sorted(TAGGERS))}", EXIT_USAGE)
    if color_fix not in COLOR_FIXES:
        raise fail(f"--color-fix takes {', '.join(COLOR_FIXES)}, not '{color_fix}'", EXIT_USAGE)
    ext = ext.lower().lstrip(".")
    ext = {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext)
    if ext not in EXTENSIONS:
        raise fail(f"--ext takes {', '.join(EXTENSIONS)}, not '{ext}'", EXIT_USAGE)
    try:
        tile_spec = parse_tile(tile)
        shard_ij = parse_shard(shard)
    except ValueError as e:
        raise fail(str(e), EXIT_USAGE) from None
    if input.is_dir():
        inp, out = input.resolve(), output.resolve()
        if out == inp or inp in out.parents:
            raise fail(
                f"output folder {output} is inside the input folder {input}: outputs would mix with (or "
                f"become) inputs; choose a folder outside it",
                EXIT_USAGE,
            )
    _check_writable(output)
    images, not_images = list_inputs(input, recursive=recursive)
    if not images:
        raise fail(
            f"no images found in {input}" + ("" if recursive else " (sub-folders need --recursive)"),
            EXIT_USAGE,
        )
    _refuse_path_conflicts(images, input, output, ext, suffix, max_pixels)

    # 2. processes and device
    state = _distributed_state()
    nproc, rank = (state.num_processes, state.process_index) if state else (1, 0)
    is_main = rank == 0
    if state and device == "auto":
        dev = state.device
    else:
        dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    from sanasr_cli.pipeline.upscale import split_work

    mine = split_work(images, shard_ij, (rank, nproc))

    # 3. model
    quiet_libraries()
    with console.status(f"loading model {model} on {dev} ...") if is_main else _nullcontext():
        try:
            from sanasr_cli.models.sanasr import load_model

            sr_model = load_model(model, device=dev, dtype=dtype, base=base, seed=seed, full_vae=full_vae)
        except ModelDirError as e:
            raise fail(str(e), EXIT_USAGE) from None
        except MissingWeightsError as e:
            raise fail(str(e), EXIT_FAILED) from None
    if sr_model.description.random_weights and is_main:
        console.print(
            f"[yellow]note:[/] '{model}' has random (untrained) weights: outputs show the pipeline, "
            "not SR quality."
        )
    rule = po.asked_prompt_rule(
        sr_model.description.prompt,
        tagger,
        tagger_weights,
        tagger_model,
        tag_vocab,
        template,
        warn=sr_model.source_dir is not None and is_main,
    )  # presets were trained with no rule
    tagger_obj = po.build_tagger(rule, dev, tag_cache)

    from sanasr_cli.pipeline.upscale import UpscaleOptions

    options = UpscaleOptions(
        scale=scale,
        prompt_rule=rule,
        user_prompt=prompt,
        tile=tile_spec,
        color_fix=color_fix,
        batch_size=batch_size,
        ext=ext,
        suffix=suffix,
        overwrite=overwrite,
        max_pixels=int(max_pixels * 1e6),
        save_prompts=save_prompts,
        quality=quality,
        tagger=tagger_obj,
    )

    po.pretag(tagger_obj, mine)  # one tagging pass with a bar (cached by file hash), then the GPU is free

    # 4. run (Ctrl-C: outputs written so far stay, the one in flight leaves no file, the report is written)
    start = time.perf_counter()
    records, interrupted = _run(sr_model, mine, input, output, options, rank, show=is_main)
    all_records = [r.to_dict() for r in records]
    if state and state.num_processes > 1:
        from accelerate.utils import gather_object

        all_records = sorted(gather_object(all_records), key=lambda r: r["input"])
    if shard_ij == (0, 1):  # every file of the input folder is accounted for: the ones that are not images too
        from sanasr_cli.pipeline.upscale import UpscaleRecord

        all_records += [UpscaleRecord(input=str(p), status="ignored", note=why).to_dict() for p, why in not_images]

    # 5. report and summary (main process only)
    failed = [r for r in all_records if r["status"] == "failed"]
    if is_main:
        if report is not None:
            from sanasr_cli.pipeline.upscale import write_report

            meta = {
                "input": str(input),
                "output": str(output),
                "model": model,
                "scale": scale,
                "tile": tile,
                "color_fix": color_fix,
                "precision": str(dtype).replace("torch.", ""),
                "device": str(dev),
                "processes": nproc,
                "shard": shard or "0/1",
                "seconds": round(time.perf_counter() - start, 3),
                "interrupted": interrupted,
            }
            write_report(report, all_records, meta)
        _print_summary(all_records, output, report)
    if interrupted:
        console.print(
            "[yellow]interrupted:[/] rerun the same command to resume (finished outputs are skipped)"
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _refuse_path_conflicts(images, input, output, ext, suffix, max_pixels) -> None:
    """Exit 2 before any work when two inputs would share an output, or an output would land on an input
    (e.g. `-o` a parent of the input folder) or outside -o: the user must choose, nothing is lost."""
    from sanasr_cli.pipeline.upscale import UpscaleOptions, plan_outputs

    options = UpscaleOptions(ext=ext, suffix=suffix, max_pixels=int(max_pixels * 1e6))
    conflicts = [p.error for p in plan_outputs(images, input, output, options) if p.conflict]
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise fail(f"{conflicts[0]}{more}; nothing was written", EXIT_USAGE)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _distributed_state():
    """accelerate's PartialState when launched with several processes (accelerate launch, torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # accelerate 1.15 picks gloo on CPU only when told cpu=True (its `--cpu` launch flag starts one process
    # without MPI, so CPU-only runs are launched with `--multi_gpu` and land here without CUDA)
    use_cpu = (
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    )
    return PartialState(cpu=use_cpu)


def _check_writable(output: Path) -> None:
    """Fail early (exit 2) when OUTDIR cannot be written; folders made for the check are removed again, so a
    run that stops before writing anything (e.g. a tagger that cannot load) leaves no trace."""
    import tempfile

    created = []
    try:
        for folder in [output, *output.parents]:
            if folder.exists():
                break
            created.append(folder)
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as e:
        raise fail(f"output folder {output} is not writable ({e.strerror or e})", EXIT_USAGE) from None
    finally:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass


def _run(sr_model, images, input_root, output, options, rank: int, show: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from sanasr_cli.pipeline.upscale import UpscaleRecord, upscale_files

    progress = Progress(
        TextColumn("[bold]upscale"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=not show,
    )
    done: list[UpscaleRecord] = []
    with progress:
        task = progress.add_task("", total=len(images))

        def on_done(rec):
            done.append(rec)
            if rec.status == "failed":
                progress.console.print(f"[red]failed:[/] {rec.error}", highlight=False, soft_wrap=True)
            progress.update(task, advance=1, description=Path(rec.input).name)

        try:
            return upscale_files(
                sr_model, images, input_root, output, options, on_done=on_done, process_index=rank
            ), False
        except KeyboardInterrupt:
            return done, True


def _print_summary(records: list[dict], output: Path, report: Path | None) -> None:
    from rich.table import Table

    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed", "ignored")}
    seconds = sum(r["seconds"] or 0 for r in records if r["status"] == "ok")
    peaks = [r["peak_memory_mb"] for r in records if r.get("peak_memory_mb")]
    table = Table(title="upscale summary", show_header=True, header_style="bold")
    table.add_column("inputs", justify="right")
    table.add_column("written", justify="right")
    table.add_column("skipped (done)", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("s / image", justify="right")
    table.add_column("peak MB", justify="right")
    table.add_row(
        str(len(records) - counts["ignored"]),
        str(counts["ok"]),
        str(counts["skipped"]),
        f"[red]{counts['failed']}[/]" if counts["failed"] else "0",
        f"{seconds / counts['ok']:.2f}" if counts["ok"] else "-",
        f"{max(peaks):.0f}" if peaks else "-",
    )
    console.print(table)
    for r in [r for r in records if r["status"] == "failed" and r["process"] != 0][
        :20
    ]:  # others printed live
        console.print(
            f"[red]failed (process {r['process']}):[/] {r['error']}", highlight=False, soft_wrap=True
        )
    if counts["ignored"]:
        console.print(
            f"ignored {counts['ignored']} file(s) that are not images (each listed in the report with why)",
            highlight=False,
        )
    where = f"outputs in {output}" + (f", report in {report}" if report else "")
    console.print(where, highlight=False)


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("upscale")(one_line_errors(upscale))
