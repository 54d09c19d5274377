"""`sanasr degrade HQ_DIR -o OUT`: make LQ/HQ pairs with the Real-ESRGAN training degradation pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sanasr_cli.cli import options as opt
from sanasr_cli.cli.common import EXIT_FAILED, EXIT_USAGE, console, fail, resolve_device

HQ_DIR = typer.Argument(..., help="A folder of HQ images (png, jpg, webp, tif, bmp), or one image.")
OUTPUT = typer.Option(..., "-o", "--output", help="Writes OUT/hq/<stem>.png and OUT/lq/<stem>.png.")
SCALE = typer.Option(4, "--scale", "-s", min=1, help="LQ size = HQ size / scale (an integer).")
CROP = typer.Option(512, "--crop", min=1, help="Centre-crop HQ to N x N (a multiple of --scale) before degrading.")
NO_CROP = typer.Option(
    False, "--no-crop", help="Keep whole images (cut to a multiple of --scale from the top-left corner)."
)
CONFIG = typer.Option(None, "--config", help="JSON file overriding DegradationConfig fields (Real-ESRGAN yml names).")
JPEG = typer.Option(None, "--jpeg", help="JPEG codec: torch (default, as in training) or pil (libjpeg).")
RECURSIVE = typer.Option(
    False,
    "--recursive",
    "-r",
    help="Include sub-folders. Outputs stay flat (OUT/hq/<stem>.png), so stems must be unique: a repeated "
    "stem fails that file.",
)
OVERWRITE = typer.Option(
    False,
    "--overwrite",
    help="Also replace files in OUT that sanasr did not write (default: such a file fails that input and is "
    "left as it is; files degrade wrote before are always replaced).",
)


def degrade(
    hq_dir: Path = HQ_DIR,
    output: Path = OUTPUT,
    scale: int = SCALE,
    seed: int = opt.seed("Run seed; each file's draws come from (seed, file stem)."),
    crop: int = CROP,
    no_crop: bool = NO_CROP,
    config: Path = CONFIG,
    jpeg: str = JPEG,
    device: str = opt.device("cpu (default: reproducible bytes), cuda, cuda:N, auto.", default="cpu"),
    recursive: bool = RECURSIVE,
    overwrite: bool = OVERWRITE,
):
    """Degrade every image of HQ_DIR into an LQ/HQ benchmark pair (e.g. a DIV2K-Val-style set).

    The pipeline is the one training uses: Real-ESRGAN x4plus second-order degradation (blur, resize, noise,
    JPEG, twice, then sinc + resize + JPEG). The same seed gives the same bytes. OUT/degradation.json records
    the configuration and the parameters drawn for every file. A file already in OUT is replaced only when
    sanasr wrote it (recorded in OUT/.sanasr-outputs.jsonl) or with --overwrite. Exit code: 0 when every image
    succeeded, 1 when any failed (the others still run), 2 for usage errors.
    """
    crop_size = None if no_crop else crop
    images = _check_inputs(hq_dir, output, scale, crop_size, recursive, overwrite)
    degrader = _degrader(config, jpeg, scale)
    _run(images, output, degrader, seed, crop_size, resolve_device(device), overwrite)


def _check_inputs(hq_dir, output, scale, crop_size, recursive, overwrite) -> list[Path]:
    """The input images; exit 2 when the inputs or OUT cannot be used as asked."""
    from sanasr_cli.data.io import list_images
    from sanasr_cli.errors import SanaSRError
    from sanasr_cli.pipeline.degrade import check_not_foreign
    from sanasr_cli.safe_files import OutputLedger

    if not hq_dir.exists():
        raise fail(f"input {hq_dir} does not exist", EXIT_USAGE)
    if recursive and hq_dir.is_dir() and output.resolve().is_relative_to(hq_dir.resolve()):
        raise fail(f"output folder {output} is inside the input folder {hq_dir}; with -r choose another -o", EXIT_USAGE)
    images = list_images(hq_dir, recursive=recursive)
    if not images:
        raise fail(f"no images found in {hq_dir}", EXIT_USAGE)
    if crop_size is not None and crop_size % scale:
        raise fail(f"--crop {crop_size} is not a multiple of --scale {scale}", EXIT_USAGE)
    inputs = {p.resolve() for p in images}
    for sub in ("hq", "lq"):
        if any((output / sub / f"{p.stem}.png").resolve() in inputs for p in images):
            raise fail(f"output folder {output / sub} would overwrite the inputs; choose another -o", EXIT_USAGE)
    try:  # the manifest is written at the end: a file of the user's there is refused now, not after the work
        check_not_foreign(output / "degradation.json", OutputLedger(output), overwrite)
    except SanaSRError as e:
        raise fail(str(e), EXIT_USAGE) from None
    return images


def _degrader(config: Path | None, jpeg: str | None, scale: int):
    """The Real-ESRGAN degrader with --config's overrides and --jpeg; exit 2 on a bad config."""
    from sanasr_cli.data.degradation import DegradationConfig, RealESRGANDegrader

    overrides = {}
    if config is not None:
        try:
            overrides = json.loads(config.read_text())
            if not isinstance(overrides, dict):
                raise ValueError("expected a JSON object of DegradationConfig fields")
        except (OSError, ValueError) as e:
            raise fail(f"--config {config}: {e}", EXIT_USAGE) from None
    try:
        cfg = DegradationConfig.from_dict({**overrides, **({"jpeg_backend": jpeg} if jpeg else {})})
        return RealESRGANDegrader(cfg, scale=scale)
    except (TypeError, ValueError) as e:
        raise fail(f"degradation config: {e}", EXIT_USAGE) from None


def _run(images, output, degrader, seed, crop_size, dev, overwrite) -> None:
    """degrade_files with the bar, then the manifest and the summary; exit 1 when any input failed."""
    from sanasr_cli.pipeline.degrade import degrade_files, write_manifest

    with opt.progress_bar("degrade") as progress:
        task = progress.add_task("", total=len(images))

        def on_done(rec):
            if rec.status != "ok":
                progress.console.print(f"[red]failed:[/] {rec.error}", highlight=False, soft_wrap=True)
            progress.update(task, advance=1, description=Path(rec.input).name)

        records = degrade_files(
            images, output, degrader, seed=seed, crop=crop_size, device=dev, on_done=on_done, overwrite=overwrite
        )
    write_manifest(output / "degradation.json", degrader, seed, crop_size, records, overwrite)
    failed = [r for r in records if r.status != "ok"]
    console.print(
        f"{len(records) - len(failed)} of {len(records)} pairs written to {output}/hq and {output}/lq"
        + (f", [red]{len(failed)} failed[/]" if failed else "")
    )
    if failed:
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("degrade")(one_line_errors(degrade))
