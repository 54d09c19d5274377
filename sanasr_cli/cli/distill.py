"""`sanasr distill encoder|decoder MODEL -o OUT --hq DIR...`: students of the DC-AE (training/distill.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from sanasr_cli.cli import options as opt
from sanasr_cli.cli.common import EXIT_USAGE, check_model_output, console, fail, one_line_errors, quiet_libraries

distill_app = typer.Typer(
    help="Distil the frozen DC-AE into students: an encoder that reads the LQ image (encoder) and a light "
    "decoder (decoder). OUT is MODEL plus the student; upscale, eval, bench and prune use it (--full-vae: not). "
    "Resumable (--resume auto); on several GPUs or processes: accelerate launch --multi_gpu --num_processes N "
    "-m sanasr_cli distill ... (DDP: each process its own share of the HQ images; one writes).",
    no_args_is_help=True,
)


def _run(kind: str, model: str, output: Path, hq: list[Path], **options) -> None:
    from sanasr_cli.errors import DatasetError
    from sanasr_cli.training.checkpoint import CheckpointError
    from sanasr_cli.training.distill import DistillConfig, DistillConfigError, distill

    inputs = [Path(model)] if Path(model).exists() else []
    check_model_output(output, options["overwrite"], inputs)
    config = DistillConfig(kind=kind, model=model, hq=[str(p) for p in hq], output=str(output), **options)
    try:
        config.check()
    except DistillConfigError as e:
        raise fail(str(e), EXIT_USAGE) from None
    quiet_libraries()
    progress = opt.progress_bar(f"distill {kind}")
    task = progress.add_task("loss -", total=config.steps)

    def on_start(first: int, total: int) -> None:  # the main process only: one bar under accelerate launch
        progress.update(task, completed=first)
        progress.start()

    def on_step(step: int, total: int, loss: float) -> None:
        progress.update(task, completed=step, description=f"loss {loss:.5f}")

    def on_message(text: str) -> None:
        progress.console.print(text, highlight=False)

    try:
        result = distill(config, on_step=on_step, on_message=on_message, on_start=on_start)
    except (DistillConfigError, CheckpointError, DatasetError) as e:
        raise fail(str(e), EXIT_USAGE) from None
    finally:
        progress.stop()
    if result.is_main:
        console.print(
            f"{kind} student written into {result.output} ({result.steps} steps; student vs teacher "
            f"{result.validation_psnr:.2f} dB on the validation crops; checkpoints in {config.run})",
            highlight=False,
        )


def _common(kind: str):
    @one_line_errors
    def command(
        model: str = typer.Argument(..., help="A preset (nano, tiny, ...) or a model directory; its VAE teaches."),
        output: Path = typer.Option(..., "-o", "--output", help="The model directory to write (MODEL + student)."),
        hq: list[Path] = typer.Option(..., "--hq", help="Folder of HQ training images (repeatable); LQ synthesised."),
        steps: int = typer.Option(2000, "--steps", help="Optimisation steps."),
        batch_size: int = typer.Option(8, "--batch-size", help="Crops per step and process."),
        crop: int = typer.Option(64, "--crop", help="HQ crop side in pixels (a multiple of the VAE factor)."),
        lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (warm-up, then cosine to lr/10)."),
        seed: int = opt.seed("Seed of the student, the crops and the degradations."),
        save_every: int = typer.Option(250, "--save-every", help="Checkpoint (and validation grid) every N steps."),
        run_dir: Path = typer.Option(None, "--run-dir", help="Checkpoints and validation grids (default: OUT.run)."),
        resume: str = typer.Option(
            "auto", "--resume", help="auto (newest checkpoint of the run folder), none, or a checkpoint folder."
        ),
        device: str = opt.device(
            "cpu, cuda (under accelerate launch: each process its own GPU), cuda:N (one process), auto.",
            default="cpu",
        ),
        base: str = opt.BASE,
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    ):
        _run(
            kind, model, output, hq, steps=steps, batch_size=batch_size, crop=crop, lr=lr, seed=seed,
            save_every=save_every, run_dir=str(run_dir) if run_dir else None, resume=resume, device=device,
            base=base, overwrite=overwrite,
        )  # fmt: skip

    command.__doc__ = {
        "encoder": "Train a student encoder that reads the LQ image at its own resolution and predicts the "
        "teacher's latent z_L = E(bicubic_x4(x_L)) of Real-ESRGAN-degraded LQ (loss: latent MSE).",
        "decoder": "Train a light decoder that reproduces the teacher decoder's image from z_H = E(x_H) and "
        "from the model's restored z_hat (loss: image MSE; LPIPS weights are not available offline).",
    }[kind]
    return command


distill_app.command("encoder")(_common("encoder"))
distill_app.command("decoder")(_common("decoder"))


def register(app: typer.Typer) -> None:
    app.add_typer(distill_app, name="distill")
