"""`sanasr upscale INPUT -o OUTDIR`: super-resolve an image or a folder of images."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import typer

from sanasr_cli.cli import options as opt
from sanasr_cli.cli import prompt_options as po
from sanasr_cli.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    check_report_paths,
    console,
    describe_model_or_fail,
    fail,
    load_model_or_fail,
    precision_choice,
    quiet_libraries,
    resolve_device,
)

EXIT_INTERRUPTED = 130


INPUT = typer.Argument(..., help="An image file or a folder of images (png, jpg, webp, tif, bmp, gif: first frame).")
OUTPUT = typer.Option(..., "-o", "--output", help="Folder for the results (never inside INPUT).")
MODEL = typer.Option(
    "sana-600m-512",
    "--model",
    "-m",
    help="A preset (sana-600m-512, tiny) or a model directory written by train / merge-lora / prune.",
)
SCALE = typer.Option(
    4.0,
    "--scale",
    "-s",
    min=1.0,
    help="Output size = round(scale x input size). The model runs at x4; other scales resize its result.",
)
TILE = typer.Option(
    "auto",
    "--tile",
    help="auto (plan from free GPU memory; whole image on CPU unless huge), none, or a tile size in pixels "
    "of the x4 image (e.g. 512). Out of memory halves the tile and retries.",
)
COLOR_FIX = typer.Option(
    "wavelet",
    "--color-fix",
    help="wavelet (default: low frequencies from the bicubic input, detail from the model), adain "
    "(global per-channel mean/std), none (the paper's pipeline, the default of `sanasr eval --model` "
    "and of prune's --validate gate).",
)
EXT = typer.Option(
    "png",
    "--ext",
    help="png (default: lossless, keeps 16-bit and alpha), auto (the input's format), jpg, webp, tif. "
    "Images with transparency are written as PNG when the format cannot hold it.",
)
SUFFIX = typer.Option("", "--suffix", help="Added to output names: photo.jpg -> photo<suffix>.png.")
RECURSIVE = typer.Option(False, "--recursive", "-r", help="Include sub-folders (mirrored in OUTDIR).")
OVERWRITE = typer.Option(False, "--overwrite", help="Redo finished outputs (default: skip them, so a rerun resumes).")
REPORT = typer.Option(None, "--report", help="Write a JSON report, one record per input (e.g. run.json).")
BATCH_SIZE = typer.Option(1, "--batch-size", min=1, help="Tiles, or untiled images of one size, per step.")
SHARD = typer.Option(None, "--shard", help="i/n: do only the i-th of n equal shares (cluster job arrays).")
MAX_PIXELS = typer.Option(
    64.0, "--max-pixels", min=0.0, help="Refuse inputs above this many megapixels (decompression-bomb guard)."
)
SAVE_PROMPTS = typer.Option(
    False, "--save-prompts", help="Write each image's tags to <output stem>.txt (readable by --tagger file)."
)
QUALITY = typer.Option(95, "--quality", min=1, max=100, help="JPEG / WebP quality.")


def upscale(
    input: Path = INPUT,
    output: Path = OUTPUT,
    model: str = MODEL,
    base: str = opt.base("Hub id or local folder of the SANA base (default: $SANASR_BASE or the hub)."),
    scale: float = SCALE,
    tile: str = TILE,
    color_fix: str = COLOR_FIX,
    ext: str = EXT,
    suffix: str = SUFFIX,
    recursive: bool = RECURSIVE,
    overwrite: bool = OVERWRITE,
    report: Path = REPORT,
    batch_size: int = BATCH_SIZE,
    shard: str = SHARD,
    max_pixels: float = MAX_PIXELS,
    save_prompts: bool = SAVE_PROMPTS,
    quality: int = QUALITY,
    tagger: str = po.TAGGER,
    tagger_weights: Path = po.TAGGER_WEIGHTS,
    tagger_model: str = po.TAGGER_MODEL,
    tag_vocab: Path = po.TAG_VOCAB,
    template: str = po.TEMPLATE,
    tag_cache: str = po.TAG_CACHE,
    prompt: str = opt.PROMPT,
    device: str = opt.device("auto, cpu, cuda, cuda:N (under accelerate: its device)."),
    precision: str = opt.PRECISION,
    seed: int = opt.seed("Seed of random-weight presets (tiny); inference is deterministic."),
    full_vae: bool = opt.FULL_VAE,
    keep_text_encoder: bool = opt.KEEP_TEXT_ENCODER,
    vae_decoder: str = opt.VAE_DECODER,
):
    """Super-resolve INPUT (a file or a folder) into OUTDIR.

    The image is upsampled bicubically x4, encoded by the DC-AE, restored by one LinearDiT step (Eq. 4),
    decoded, colour-fixed and resized to the asked scale. Large images are tiled in latent space.

    Finished outputs are skipped, so rerunning an interrupted command resumes it.
    Under `accelerate launch` the files are split across processes.

    Exit code: 0 when every image succeeded (or was already done), 1 when any
    failed (after all others ran), 2 for usage errors, 130 when interrupted.
    """
    f = SimpleNamespace(**locals())
    f.ext, f.tile_spec, f.shard_ij = _check_args(f)  # 1. the arguments, before anything slow
    images, not_images = _list_images(f)
    state = _distributed_state()  # 2. processes and device
    f.nproc, f.rank = (state.num_processes, state.process_index) if state else (1, 0)
    f.dev = state.device if state and device == "auto" else resolve_device(device)
    from sanasr_cli.pipeline.upscale import split_work

    mine = split_work(images, f.shard_ij, (f.rank, f.nproc))
    sr_model, options = _model_and_options(f, mine)  # 3. the prompts first, then the model
    # 4. run (Ctrl-C: outputs written so far stay, the one in flight leaves no file, the report is written)
    start = time.perf_counter()
    records, interrupted = _run(sr_model, mine, input, output, options, f.rank, show=f.rank == 0)
    _finish(f, state, records, not_images, interrupted, start)


def _check_args(f):
    """(ext, tile spec, shard) from the flags; exit 2 on a bad one."""
    from sanasr_cli.data.io import IMAGE_EXTENSIONS
    from sanasr_cli.errors import SanaSRError
    from sanasr_cli.models.tiling import parse_tile
    from sanasr_cli.pipeline.color import COLOR_FIXES
    from sanasr_cli.pipeline.upscale import EXTENSIONS, MAX_SCALE, parse_shard
    from sanasr_cli.prompts.taggers import TAGGERS
    from sanasr_cli.safe_files import check_name_part

    if not f.input.exists():
        raise fail(f"input {f.input} does not exist", EXIT_USAGE)
    if f.output.suffix.lower() in IMAGE_EXTENSIONS and not f.output.is_dir():  # not a folder made by mistake
        raise fail(
            f"-o {f.output} names an image file, but -o is the folder for the results: e.g. -o out/ writes "
            f"out/{f.input.stem if f.input.is_file() else '<name>'}.png",
            EXIT_USAGE,
        )
    for flag, value in (("--scale", f.scale), ("--max-pixels", f.max_pixels)):
        if not math.isfinite(value):
            raise fail(f"{flag} must be a finite number, not {value}", EXIT_USAGE)
    if not 0 < f.scale <= MAX_SCALE:  # the model runs at x4; a x1e9 output would be resized to exhaustion
        raise fail(f"--scale must be > 0 and at most {MAX_SCALE:g}, not {f.scale:g}", EXIT_USAGE)
    try:
        check_name_part(f.suffix, "--suffix")
    except SanaSRError as e:
        raise fail(str(e), EXIT_USAGE) from None
    if f.tagger is not None and f.tagger not in TAGGERS:
        raise fail(f"unknown tagger '{f.tagger}'; known: {', '.join(sorted(TAGGERS))}", EXIT_USAGE)
    if f.color_fix not in COLOR_FIXES:
        raise fail(f"--color-fix takes {', '.join(COLOR_FIXES)}, not '{f.color_fix}'", EXIT_USAGE)
    ext = f.ext.lower().lstrip(".")
    ext = {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext)
    if ext not in EXTENSIONS:
        raise fail(f"--ext takes {', '.join(EXTENSIONS)}, not '{ext}'", EXIT_USAGE)
    try:
        return ext, parse_tile(f.tile), parse_shard(f.shard)
    except ValueError as e:
        raise fail(str(e), EXIT_USAGE) from None


def _list_images(f):
    """(images, not-images with why) of INPUT; exit 2 when OUTDIR is inside INPUT, not writable, or would
    mix outputs."""
    from sanasr_cli.data.io import list_inputs

    if f.input.is_dir():
        inp, out = f.input.resolve(), f.output.resolve()
        if out == inp or inp in out.parents:
            raise fail(
                f"output folder {f.output} is inside the input folder {f.input}: outputs would mix with (or "
                f"become) inputs; choose a folder outside it",
                EXIT_USAGE,
            )
    _check_writable(f.output)
    images, not_images = list_inputs(f.input, recursive=f.recursive)
    if not images:
        raise fail(
            f"no images found in {f.input}" + ("" if f.recursive else " (sub-folders need --recursive)"),
            EXIT_USAGE,
        )
    _refuse_path_conflicts(images, f.input, f.output, f.ext, f.suffix, f.max_pixels)
    check_report_paths(("--report", f.report))  # after listing: the report may not be one of the inputs either
    return images, not_images


def _model_and_options(f, mine):
    """(model, UpscaleOptions). The precision is said first; then the files are tagged (one pass with a bar, cached
    by file hash) and their prompts built from what the model's folder records, before the model is loaded, so that
    the text encoder encodes them alone and is freed before the transformer and the VAE are built (an ONNX export,
    which has no text encoder, is loaded first)."""
    from sanasr_cli.pipeline.upscale import prompts_for_files

    description, folder = describe_model_or_fail(f.model, f.base, f.seed)
    f.dtype = _say_precision(f, description)
    if description is None:
        sr_model = _load_model(f)
        options = _options(f, sr_model.description, sr_model.source_dir)
        po.pretag(options.tagger, mine)
        return sr_model, options
    options = _options(f, description, folder)
    po.pretag(options.tagger, mine)
    prompts = None if f.keep_text_encoder else [p for _, p in prompts_for_files(options.tagger, mine, options).values()]
    return _load_model(f, prompts), options


def _say_precision(f, description):
    """The dtype of the run, said in its first line with why (`--precision auto`: models/precision.py)."""
    import torch

    from sanasr_cli.models.presets import PRESETS

    if description is None:
        dtype, why = torch.float32, "an ONNX export runs in float32 in ONNX Runtime"
    else:
        preset = PRESETS.get(description.base_preset)
        dtype, why = precision_choice(f.precision, f.dev, bool(preset and preset.bf16_agrees))
    if f.rank == 0:
        name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
        console.print(f"precision: {name} ({why})", highlight=False, soft_wrap=True)
    return dtype


def _load_model(f, prompts=None):
    quiet_libraries()
    is_main = f.rank == 0
    status = f"loading model {f.model} on {f.dev} ..." if is_main else None
    sr_model = load_model_or_fail(
        f.model, f.dev, f.dtype, f.base, f.seed, status, f.full_vae, f.vae_decoder, prompts=prompts
    )
    if sr_model.description.random_weights and is_main:
        console.print(
            f"[yellow]note:[/] '{f.model}' has random (untrained) weights: outputs show the pipeline, not SR quality."
        )
    return sr_model


def _options(f, description, folder):
    """The UpscaleOptions of the flags: the model's prompt rule with the prompt flags applied, its tagger."""
    from sanasr_cli.pipeline.upscale import UpscaleOptions

    rule = po.asked_prompt_rule(
        description.prompt, f.tagger, f.tagger_weights, f.tagger_model, f.tag_vocab, f.template,
        warn=folder is not None and f.rank == 0,
    )  # presets were trained with no rule  # fmt: skip
    return UpscaleOptions(
        scale=f.scale, prompt_rule=rule, user_prompt=f.prompt, tile=f.tile_spec, color_fix=f.color_fix,
        batch_size=f.batch_size, ext=f.ext, suffix=f.suffix, overwrite=f.overwrite,
        max_pixels=int(f.max_pixels * 1e6), save_prompts=f.save_prompts, quality=f.quality,
        tagger=po.build_tagger(rule, f.dev, f.tag_cache), keep_text_encoder=f.keep_text_encoder,
    )  # fmt: skip


def _finish(f, state, records, not_images, interrupted: bool, start: float) -> None:
    """Gather the records of all processes, write the report and the summary (main process), exit."""
    from sanasr_cli.pipeline.upscale import UpscaleRecord, write_report

    all_records = [r.to_dict() for r in records]
    if state and state.num_processes > 1:
        from accelerate.utils import gather_object

        all_records = sorted(gather_object(all_records), key=lambda r: r["input"])
    if f.shard_ij == (0, 1):  # every file of the input folder is accounted for: the ones that are not images too
        all_records += [UpscaleRecord(input=str(p), status="ignored", note=why).to_dict() for p, why in not_images]
    if f.rank == 0:
        if f.report is not None:
            meta = {
                "input": str(f.input), "output": str(f.output), "model": f.model, "scale": f.scale, "tile": f.tile,
                "color_fix": f.color_fix, "precision": str(f.dtype).replace("torch.", ""), "device": str(f.dev),
                "processes": f.nproc, "shard": f.shard or "0/1", "seconds": round(time.perf_counter() - start, 3),
                "interrupted": interrupted, "vae_decoder": f.vae_decoder or "as the model records",
                "text_encoder": "kept in memory" if f.keep_text_encoder
                else "freed once the prompts were encoded (encoded first: before the model was loaded)",
            }  # fmt: skip
            write_report(f.report, all_records, meta)
        _print_summary(all_records, f.output, f.report)
    if interrupted:
        console.print("[yellow]interrupted:[/] rerun the same command to resume (finished outputs are skipped)")
        raise typer.Exit(EXIT_INTERRUPTED)
    if any(r["status"] == "failed" for r in all_records):
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


def _distributed_state():
    """accelerate's PartialState when launched with several processes (accelerate launch, torchrun); the CPU
    and the process-group check as `train` has them (training/distributed.py)."""
    from sanasr_cli.training.distributed import check_process_group, cpu_process_group, launched_processes

    if launched_processes() <= 1:
        return None
    from accelerate import PartialState

    # accelerate's `--cpu` launch flag starts one process without MPI, so CPU-only runs are launched with
    # `--multi_gpu` and land here without CUDA: gloo, by cpu=True
    state = PartialState(cpu=cpu_process_group())
    check_process_group(state.num_processes)
    return state


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
    """upscale_files with the bar (main process); (records, interrupted)."""
    from sanasr_cli.pipeline.upscale import UpscaleRecord, upscale_files

    progress = opt.progress_bar("upscale", show=show, remaining=True)
    done: list[UpscaleRecord] = []
    with progress:
        task = progress.add_task("", total=len(images))

        def on_done(rec):
            done.append(rec)
            if rec.status == "failed":
                progress.console.print(f"[red]failed:[/] {rec.error}", highlight=False, soft_wrap=True)
            progress.update(task, completed=len(done), description=Path(rec.input).name)

        def on_tile(path, tiles_done, tiles):  # one large image moves the bar too, tile by tile
            progress.update(
                task, completed=len(done) + tiles_done / tiles, description=f"{path.name} tile {tiles_done}/{tiles}"
            )

        try:
            return upscale_files(
                sr_model, images, input_root, output, options, on_done=on_done, process_index=rank, on_tile=on_tile
            ), False
        except KeyboardInterrupt:
            return with_unfinished(done, images, rank), True


def with_unfinished(done: list, images: list[Path], rank: int = 0) -> list:
    """The records of an interrupted run, plus one per input it did not finish (not started, or in flight when
    Ctrl-C came), so that the report accounts for every input."""
    from sanasr_cli.pipeline.upscale import UpscaleRecord

    seen = {rec.input for rec in done}
    rest = [
        UpscaleRecord(input=str(p), status="interrupted", note="not finished: the run was interrupted", process=rank)
        for p in images
        if str(p) not in seen
    ]
    return [*done, *rest]


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
    for r in [r for r in records if r["status"] == "failed" and r["process"] != 0][:20]:  # others printed live
        console.print(f"[red]failed (process {r['process']}):[/] {r['error']}", highlight=False, soft_wrap=True)
    if counts["ignored"]:
        names = [Path(r["input"]).name for r in records if r["status"] == "ignored"]
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        where = "each listed in the report with why" if report else "--report lists each with why"
        console.print(f"ignored {len(names)} file(s) that are not images: {listed} ({where})", highlight=False)
    where = f"outputs in {output}" + (f", report in {report}" if report else "")
    console.print(where, highlight=False)


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("upscale")(one_line_errors(upscale))
