"""`sanasr prune MODEL_DIR -o OUT --budget 0.35B`: prompt-aware structured block pruning (Algorithm 2)."""

from __future__ import annotations

from pathlib import Path

import typer

from sanasr_cli.cli import prompt_options as po
from sanasr_cli.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    check_model_output,
    console,
    fail,
    full_vae_option,
    quiet_libraries,
    resolve_device,
    resolve_precision,
)

STRATEGY_HELP = (
    "fisher: Eq. 24 saliency from K calibration steps (the paper's method); "
    "tail: drop the blocks before the last; "
    "random: a seeded random order; magnitude: sum of w^2 per block."
)


def prune(
    model_dir: str = typer.Argument(
        ...,
        help="A model directory (from train or merge-lora; an adapter is merged first) or a preset (tiny).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="The pruned model directory to write."),
    budget: str = typer.Option(
        ..., "--budget", help="Transformer parameter budget: 0.35B, 344M or 350000000 (the paper uses 0.35B)."
    ),
    calib: list[Path] = typer.Option(
        None,
        "--calib",
        help="Calibration data: a folder with lq/ and hq/ (pairs), or HQ folder(s) degraded online "
        "with the Real-ESRGAN pipeline (repeat the flag for several). Needed by --strategy fisher.",
    ),
    steps: int = typer.Option(400, "--steps", "-K", min=1, help="K calibration steps (batch 1)."),
    strategy: str = typer.Option("fisher", "--strategy", help=STRATEGY_HELP),
    validate: Path = typer.Option(
        None,
        "--validate",
        help="A folder with lq/ and hq/: compare unpruned vs pruned PSNR/SSIM (Y channel).",
    ),
    validate_metrics: str = typer.Option(
        "psnr,ssim", "--validate-metrics", help="Metrics the gate monitors (names as in `sanasr eval`)."
    ),
    protocol: str = typer.Option(
        "full", "--protocol", help="Validation protocol: full (whole images) or patch."
    ),
    color_fix: str = typer.Option(
        "none",
        "--color-fix",
        help="Colour fix in the validation gate: none (default: the paper's pipeline, as `sanasr eval "
        "--model`), wavelet (`sanasr upscale`'s default), adain.",
    ),
    max_drop: float = typer.Option(
        0.03,
        "--max-drop",
        min=0.0,
        help="Largest relative metric drop --validate accepts (exit 1 beyond it).",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of calibration crops, degradations, t_k and eps, and of random."
    ),
    crop: int = typer.Option(
        512, "--crop", min=8, help="Calibration HQ crop size in pixels (multiple of 4 x VAE factor)."
    ),
    lambda_p: float = typer.Option(
        2.0, "--lambda-p", min=0.0, help="LPIPS weight in L_rec (0 turns LPIPS off)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (bf16 on CUDA as in the paper, fp32 on CPU)."
    ),
    base: str = typer.Option(
        None, "--base", help="Hub id or local folder of the SANA base, if not the recorded one."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    ema: bool = typer.Option(
        False, "--ema", help="Merge the EMA adapter (adapter_ema/ of a training checkpoint) before pruning."
    ),
    tagger: str = po.TAGGER,
    tagger_weights: Path = po.TAGGER_WEIGHTS,
    tagger_model: str = po.TAGGER_MODEL,
    tag_vocab: Path = po.TAG_VOCAB,
    template: str = po.TEMPLATE,
    tag_cache: str = po.TAG_CACHE,
    full_vae: bool = full_vae_option(),
):
    """Remove LinearDiT blocks down to a parameter budget, keeping the most salient ones.

    Algorithm 2 of the paper: merge the LoRA adapter, run K calibration steps with
    L_cal = omega(t)(L_rec + lambda_a L_align) to accumulate F_i (Eq. 23) over every transformer weight, score
    each block with S_l = sum w^2 / (F + eps) (Eq. 24), keep blocks by descending S_l within the budget (first
    and last always kept). Calibration prompts are made from the image the model's training protocol tagged
    (HQ crop for --protocol hq, the paper's default; LQ crop for lq); the --validate gate runs `sanasr eval`'s
    pipeline (LQ input tagged, no colour fix unless --color-fix). OUT/transformer/ is a diffusers folder with
    fewer blocks; OUT/prune_report.json lists every block's saliency and size, the kept blocks, parameters and
    MACs before/after, eps_p and the share of F_i below it. Nothing is
    written until the end, so an interrupted run leaves no OUT.
    Exit 0 ok, 1 validation failed (OUT still written) or run failed, 2 bad input.
    """
    from sanasr_cli.cli.merge_lora import check_model_dir
    from sanasr_cli.errors import MissingWeightsError, ModelDirError
    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.pruning.budget import parse_budget
    from sanasr_cli.pruning.select import STRATEGIES

    # ---- 1. inputs, all checked before anything slow
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
        check_model_dir(Path(model_dir))
        inputs.append(Path(model_dir))
    check_model_output(output, overwrite, inputs)
    from sanasr_cli.pipeline.color import COLOR_FIXES

    if color_fix not in COLOR_FIXES:
        raise fail(f"--color-fix takes {', '.join(COLOR_FIXES)}, not '{color_fix}'", EXIT_USAGE)
    if validate is not None:
        from sanasr_cli.evaluation.metrics import PROTOCOLS, UnknownMetricError, parse_metrics
        from sanasr_cli.pruning.validate import PairsError, list_pairs

        if protocol not in PROTOCOLS:
            raise fail(f"unknown --protocol '{protocol}' (use {' or '.join(PROTOCOLS)})", EXIT_USAGE)
        try:
            list_pairs(validate)
            parse_metrics(validate_metrics)
        except (PairsError, UnknownMetricError) as e:
            raise fail(str(e), EXIT_USAGE) from None
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)

    quiet_libraries()
    from sanasr_cli.models.sanasr import load_model

    with console.status(f"loading {model_dir} on {dev} ..."):
        try:
            model = load_model(model_dir, device=dev, dtype=dtype, base=base, seed=seed, full_vae=full_vae)
        except ModelDirError as e:
            raise fail(str(e), EXIT_USAGE) from None
        except MissingWeightsError as e:
            raise fail(str(e), EXIT_FAILED) from None
    # calibration and validation prompts follow the model's rule (Eq. 12), flags change it with a warning
    rule = po.asked_prompt_rule(
        model.description.prompt, tagger, tagger_weights, tagger_model, tag_vocab, template
    )
    tagger_obj = po.build_tagger(rule, dev, tag_cache)
    try:
        code = _run(
            model,
            str(model_dir),
            output,
            budget_n,
            budget,
            calib,
            steps,
            strategy,
            validate,
            max_drop,
            seed,
            crop,
            lambda_p,
            overwrite,
            rule,
            tagger_obj,
            (validate_metrics, protocol, color_fix),
            ema=ema,
        )
    except KeyboardInterrupt:
        raise fail(f"interrupted: nothing was written to {output}", EXIT_FAILED) from None
    raise typer.Exit(code)


def _run(
    model,
    model_dir,
    output,
    budget_n,
    budget_text,
    calib,
    steps,
    strategy,
    validate,
    max_drop,
    seed,
    crop,
    lambda_p,
    overwrite,
    rule,
    tagger,
    gate,
    ema: bool = False,
) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from sanasr_cli.errors import ModelDirError
    from sanasr_cli.pruning.blocks import block_sizes
    from sanasr_cli.pruning.budget import format_params
    from sanasr_cli.pruning.prune import PruneOptions, merge_if_needed, protocol_name, prune_model, save_pruned
    from sanasr_cli.pruning.report import render_table
    from sanasr_cli.pruning.select import BudgetError, check_budget
    from sanasr_cli.training.losses import LossWeights, PerceptualLoss

    # ---- 2. the budget, before calibration
    try:
        merged = merge_if_needed(model, ema=ema)
    except ModelDirError as e:  # e.g. --ema on a model without an EMA adapter
        raise fail(str(e), EXIT_USAGE) from None
    if merged:
        console.print(f"merged the LoRA adapter ({merged['merged_from']}/) before pruning")
    sizes = block_sizes(model.transformer)
    try:
        check_budget(sizes, budget_n)
    except BudgetError as e:
        raise fail(str(e), EXIT_USAGE) from None

    options = PruneOptions(
        budget=budget_n,
        budget_text=budget_text,
        strategy=strategy,
        steps=steps,
        seed=seed,
        weights=LossWeights(perceptual=lambda_p),
        calib_source=", ".join(map(str, calib)) if calib else None,
        prompt_source=protocol_name(model.description),  # tag what the model's training tagged (App. A.1)
    )
    batches, perceptual = None, None
    if strategy != "fisher" and calib:
        console.print(f"[yellow]note:[/] --calib is not used by --strategy {strategy} (only fisher uses it)")
    if strategy == "fisher":
        factor = model.codec.factor
        if crop % factor:
            raise fail(f"--crop {crop} must be a multiple of the VAE factor {factor}", EXIT_USAGE)
        from sanasr_cli.pruning.calib_data import calibration_batches

        try:
            batches, n_images = calibration_batches(
                calib, rule, crop=crop, seed=seed, tagger=tagger, source=options.prompt_source
            )
        except Exception as e:  # noqa: BLE001 - the datasets raise one clear DatasetError line per problem
            raise fail(f"calibration data: {e}", EXIT_USAGE) from None
        console.print(
            f"calibration: {n_images} images, K = {steps} steps, crop {crop}, on {model.device}, "
            f"prompts from the {options.prompt_source.upper()} crop"
        )
        if lambda_p:
            random_backbone = model.description.random_weights
            if random_backbone:
                console.print(
                    "[yellow]note:[/] random-weight model: LPIPS uses an untrained VGG (no download)."
                )
            try:
                perceptual = PerceptualLoss(random_backbone=random_backbone).to(model.device)
            except RuntimeError as e:
                raise fail(f"{e} (or pass --lambda-p 0)", EXIT_FAILED) from None

    # ---- 3. score, select, remove (stages of sanasr_cli.pruning.prune)
    progress = Progress(
        TextColumn("[bold]calibrate"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=strategy != "fisher",
    )
    with progress:
        task = progress.add_task("", total=steps)

        def on_step(rec):
            progress.update(task, advance=1, description=f"L_cal {rec.loss:.4f}  t {rec.timestep}")

        pruned, report = prune_model(
            model, options, batches, perceptual, on_step=on_step, source_model=str(model_dir)
        )
    if report.calibration is not None:
        report.calibration["prompt_rule"] = rule.to_dict()
    console.print(render_table(report))
    if report.fisher is not None:
        f = report.fisher
        console.print(
            f"F_i below eps_p = {f['eps_p']:g}: {f['fraction_below_eps_p']:.2%} of {f['count']} block weights "
            f"(F from {f['min']:.3g} to {f['max']:.3g})"
        )

    # ---- 4. validation gate (App. B), then write everything at once
    code = 0
    if validate is not None:
        from sanasr_cli.errors import SanaSRError
        from sanasr_cli.pruning.validate import validate_pruning

        metrics, protocol, color_fix = gate
        try:
            with console.status(f"validating on {validate} (unpruned vs pruned, {protocol} protocol) ..."):
                result = validate_pruning(
                    model,
                    pruned,
                    validate,
                    max_drop=max_drop,
                    rule=rule,
                    tagger=tagger,
                    metrics=metrics.split(","),
                    protocol=protocol,
                    color_fix=color_fix,
                )
        except SanaSRError as e:  # the gate cannot decide: say why, still write OUT, exit 1
            report.validation = {"error": str(e), "passed": False}
            console.print(f"[red]validation could not run:[/] {e}", highlight=False, soft_wrap=True)
            code = EXIT_FAILED
        else:
            report.validation = result.to_dict()
            for name in result.before:
                bad = name in result.failed
                console.print(
                    f"{name}: {result.before[name]:.4f} -> {result.after[name]:.4f} "
                    f"(drop {result.drop[name]:+.2%}){' [red]> max-drop[/]' if bad else ''}"
                )
            if not result.passed:
                code = EXIT_FAILED
    with console.status(f"writing {output} ..."):
        save_pruned(model, pruned, report, output, overwrite=overwrite)
    console.print(
        f"pruned {report.num_blocks_before} -> {report.num_blocks_after} blocks, "
        f"{format_params(report.params_before)} -> {format_params(report.params_after)} parameters: {output}"
    )
    if code and report.validation.get("failed"):
        failed = ", ".join(report.validation["failed"])
        console.print(f"[red]validation failed:[/] {failed} dropped more than {max_drop:.1%}")
    return code


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("prune")(one_line_errors(prune))
