"""`sanasr prune MODEL_DIR -o OUT --budget 0.35B`: prompt-aware structured block pruning (Algorithm 2).

A thin face of `sanasr_cli.pruning.run.run_prune`: parse and check the flags, load the model, build the options,
show the hooks' progress, map errors to exit codes."""

from __future__ import annotations

from pathlib import Path

import typer

from sanasr_cli.cli import options as opt
from sanasr_cli.cli import prompt_options as po
from sanasr_cli.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    check_model_dir,
    check_model_output,
    console,
    describe_model_or_fail,
    fail,
    load_model_or_fail,
    quiet_libraries,
    resolve_device,
    resolve_precision,
)

STRATEGY_HELP = (
    "fisher: Eq. 24 saliency from K calibration steps (the paper's method); "
    "tail: drop the blocks before the last; "
    "random: a seeded random order; magnitude: sum of w^2 per block."
)
MODEL_DIR = typer.Argument(
    ...,
    help="A model directory (from train or merge-lora; an adapter is merged first), a training run (its newest "
    "checkpoint) or a preset (tiny).",
)
OUTPUT = typer.Option(..., "-o", "--output", help="The pruned model directory to write.")
BUDGET = typer.Option(
    ..., "--budget", help="Transformer parameter budget: 0.35B, 344M or 350000000 (the paper uses 0.35B)."
)
CALIB = typer.Option(
    None,
    "--calib",
    help="Calibration data: a folder with lq/ and hq/ (pairs), or HQ folder(s) degraded online "
    "with the Real-ESRGAN pipeline (repeat the flag for several). Needed by --strategy fisher.",
)
STEPS = typer.Option(400, "--steps", "-K", min=1, help="K calibration steps (batch 1).")
STRATEGY = typer.Option("fisher", "--strategy", help=STRATEGY_HELP)
VALIDATE = typer.Option(
    None, "--validate", help="A folder with lq/ and hq/: compare unpruned vs pruned PSNR/SSIM (Y channel)."
)
VALIDATE_METRICS = typer.Option(
    "psnr,ssim", "--validate-metrics", help="Metrics the gate monitors (names as in `sanasr eval`)."
)
PROTOCOL = typer.Option("full", "--protocol", help="Validation protocol: full (whole images) or patch.")
COLOR_FIX = typer.Option(
    "none",
    "--color-fix",
    help="Colour fix in the validation gate: none (default: the paper's pipeline, as `sanasr eval "
    "--model`), wavelet (`sanasr upscale`'s default), adain.",
)
MAX_DROP = typer.Option(
    0.03, "--max-drop", min=0.0, help="Largest relative metric drop --validate accepts (exit 1 beyond it)."
)
SEED = opt.seed("Seed of calibration crops, degradations, t_k and eps, and of random.")
CROP = typer.Option(512, "--crop", min=8, help="Calibration HQ crop size in pixels (multiple of 4 x VAE factor).")
LAMBDA_P = typer.Option(2.0, "--lambda-p", min=0.0, help="LPIPS weight in L_rec (0 turns LPIPS off).")
PRECISION = opt.precision("auto (bf16 on CUDA as in the paper, fp32 on CPU).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace OUT if it exists.")
EMA = typer.Option(False, "--ema", help="Merge the EMA adapter (adapter_ema/ of a training checkpoint) before pruning.")


def prune(
    model_dir: str = MODEL_DIR,
    output: Path = OUTPUT,
    budget: str = BUDGET,
    calib: list[Path] = CALIB,
    steps: int = STEPS,
    strategy: str = STRATEGY,
    validate: Path = VALIDATE,
    validate_metrics: str = VALIDATE_METRICS,
    protocol: str = PROTOCOL,
    color_fix: str = COLOR_FIX,
    max_drop: float = MAX_DROP,
    seed: int = SEED,
    crop: int = CROP,
    lambda_p: float = LAMBDA_P,
    device: str = opt.DEVICE,
    precision: str = PRECISION,
    base: str = opt.BASE,
    overwrite: bool = OVERWRITE,
    ema: bool = EMA,
    tagger: str = po.TAGGER,
    tagger_weights: Path = po.TAGGER_WEIGHTS,
    tagger_model: str = po.TAGGER_MODEL,
    tag_vocab: Path = po.TAG_VOCAB,
    template: str = po.TEMPLATE,
    tag_cache: str = po.TAG_CACHE,
    full_vae: bool = opt.FULL_VAE,
    keep_text_encoder: bool = opt.KEEP_TEXT_ENCODER,
):
    """Remove LinearDiT blocks down to a parameter budget, keeping the most salient ones.

    Algorithm 2 of the paper: merge the LoRA adapter, run K calibration steps with
    L_cal = omega(t)(L_rec + lambda_a L_align) to accumulate F_i (Eq. 23) over every transformer weight, score
    each block with S_l = sum w^2 / (F + eps) (Eq. 24), keep blocks by descending S_l within the budget (first
    and last always kept). Calibration prompts are made from the image the model's training protocol tagged
    (HQ crop for --protocol hq, the paper's default; LQ crop for lq); the --validate gate runs `sanasr eval`'s
    pipeline (LQ input tagged, no colour fix unless --color-fix). OUT/transformer/ is a diffusers folder with
    fewer blocks; OUT/prune_report.json lists every block's saliency and size, the kept blocks, parameters and
    MACs before/after, eps_p and the share of F_i below it. Nothing is written until the end, so an
    interrupted run leaves no OUT. Exit 0 ok, 1 validation failed (OUT still written) or run failed, 2 bad input.
    """
    from sanasr_cli.pruning.prune import PruneOptions
    from sanasr_cli.pruning.run import PruneGate, PruneJob
    from sanasr_cli.training.losses import LossWeights

    model_dir, budget_n = _check_inputs(model_dir, output, budget, strategy, calib, validate, overwrite)
    _check_gate(color_fix, validate, protocol, validate_metrics)
    # calibration and validation prompts follow the model's rule (Eq. 12), flags change it with a warning
    prompt_flags = (tagger, tagger_weights, tagger_model, tag_vocab, template)
    model, dev, rule = _load(model_dir, device, precision, base, seed, full_vae, prompt_flags, strategy, validate)
    gate = None if validate is None else PruneGate(
        validate, max_drop, tuple(validate_metrics.split(",")), protocol, color_fix, keep_text_encoder
    )  # fmt: skip
    tagger_obj = po.build_tagger(rule, dev, tag_cache)
    job = PruneJob(output, str(model_dir), list(calib or []), crop, ema, overwrite, gate, rule, tagger_obj)
    options = PruneOptions(
        budget=budget_n, budget_text=budget, strategy=strategy, steps=steps, seed=seed,
        weights=LossWeights(perceptual=lambda_p),
    )  # fmt: skip
    raise typer.Exit(_run(model, options, job))


def _check_inputs(model_dir, output, budget, strategy, calib, validate, overwrite) -> tuple[str, int]:
    """Every check that needs no model (exit 2 on a bad one); returns the model (a training run's newest
    checkpoint for a run folder) and the budget in parameters."""
    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.pruning.budget import parse_budget
    from sanasr_cli.pruning.select import STRATEGIES

    try:
        budget_n = parse_budget(budget)
    except ValueError as e:
        raise fail(str(e), EXIT_USAGE) from None
    if strategy not in STRATEGIES:
        raise fail(f"unknown strategy '{strategy}' (use {', '.join(STRATEGIES)})", EXIT_USAGE)
    if strategy == "fisher" and not calib:
        raise fail(
            "--strategy fisher needs calibration data: --calib PAIRS_DIR (lq/ + hq/) or HQ folders",
            EXIT_USAGE,
        )
    for folder in calib or []:
        if not folder.exists():
            raise fail(f"calibration folder {folder} does not exist", EXIT_USAGE)
    inputs = [*(calib or []), *([validate] if validate is not None else [])]
    if model_dir not in PRESETS:
        model_dir = str(check_model_dir(Path(model_dir)))
        inputs.append(Path(model_dir))
    check_model_output(output, overwrite, inputs)
    return model_dir, budget_n


def _check_gate(color_fix, validate, protocol, validate_metrics) -> None:
    from sanasr_cli.pipeline.color import COLOR_FIXES

    if color_fix not in COLOR_FIXES:
        raise fail(f"--color-fix takes {', '.join(COLOR_FIXES)}, not '{color_fix}'", EXIT_USAGE)
    if validate is None:
        return
    from sanasr_cli.evaluation.metrics import PROTOCOLS, UnknownMetricError, parse_metrics
    from sanasr_cli.pruning.validate import PairsError, list_pairs

    if protocol not in PROTOCOLS:
        raise fail(f"unknown --protocol '{protocol}' (use {' or '.join(PROTOCOLS)})", EXIT_USAGE)
    try:
        list_pairs(validate)
        parse_metrics(validate_metrics)
    except (PairsError, UnknownMetricError) as e:
        raise fail(str(e), EXIT_USAGE) from None


def _load(model_dir, device, precision, base, seed, full_vae, prompt_flags, strategy, validate):
    """(model, device, the run's prompt rule). A fixed prompt (no tagger) is encoded before the model is built, in
    each layout the run uses (calibration's, the gate's), by the text encoder alone, which is then freed."""
    from sanasr_cli.prompts.rule import fixed_prompt

    rule = po.asked_prompt_rule(describe_model_or_fail(str(model_dir), base, seed)[0].prompt, *prompt_flags)
    layouts = ((False,) if strategy == "fisher" else ()) + ((True,) if validate is not None else ())
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    quiet_libraries()
    status = f"loading {model_dir} on {dev} ..."
    fixed = fixed_prompt(rule) if layouts else None
    model = load_model_or_fail(
        model_dir, dev, dtype, base, seed, status, full_vae, prompts=[fixed] if fixed is not None else None,
        reuse_prefix=layouts,
    )  # fmt: skip
    return model, dev, rule


def _run(model, options, job) -> int:
    """run_prune with the console's hooks; its errors as exit codes; the outcome printed."""
    from sanasr_cli.pruning.budget import format_params
    from sanasr_cli.pruning.run import PruneHooks, PruneInputError, run_prune
    from sanasr_cli.pruning.select import BudgetError

    hooks = PruneHooks(
        note=lambda text: console.print(text, highlight=False, soft_wrap=True),
        status=console.status,
        calibrating=_CalibrationBar,
        pruned=_print_selection,
    )
    try:
        result = run_prune(model, options, job, hooks)
    except (PruneInputError, BudgetError) as e:
        raise fail(str(e), EXIT_USAGE) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted: nothing was written to {job.output}", EXIT_FAILED) from None
    report = result.report
    if result.validation is not None:
        v = result.validation
        for name in v.before:
            bad = " [red]> max-drop[/]" if name in v.failed else ""
            console.print(f"{name}: {v.before[name]:.4f} -> {v.after[name]:.4f} (drop {v.drop[name]:+.2%}){bad}")
    console.print(
        f"pruned {report.num_blocks_before} -> {report.num_blocks_after} blocks, "
        f"{format_params(report.params_before)} -> {format_params(report.params_after)} parameters: {job.output}"
    )
    if not result.passed and report.validation.get("failed"):
        failed = ", ".join(report.validation["failed"])
        console.print(f"[red]validation failed:[/] {failed} dropped more than {job.gate.max_drop:.1%}")
    return 0 if result.passed else EXIT_FAILED


class _CalibrationBar:
    """The calibrate bar (shown for fisher only: steps > 0); yields the on_step hook."""

    def __init__(self, steps: int):
        self.progress = opt.progress_bar("calibrate", show=steps > 0, remaining=True)
        self.steps = steps

    def __enter__(self):
        self.progress.__enter__()
        task = self.progress.add_task("", total=self.steps)

        def on_step(rec):
            self.progress.update(task, advance=1, description=f"L_cal {rec.loss:.4f}  t {rec.timestep}")

        return on_step

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def _print_selection(report) -> None:
    from sanasr_cli.pruning.report import render_table

    console.print(render_table(report))
    if report.fisher is not None:
        f = report.fisher
        console.print(
            f"F_i below eps_p = {f['eps_p']:g}: {f['fraction_below_eps_p']:.2%} of {f['count']} block weights "
            f"(F from {f['min']:.3g} to {f['max']:.3g})"
        )


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("prune")(one_line_errors(prune))
