"""`run_prune(model, options, hooks) -> PruneResult`: the whole of `sanasr prune` once the model is loaded.

merge the adapter -> check the budget -> calibration data and LPIPS (fisher) -> score, select, remove
(`prune_model`) -> the validation gate (App. B) -> write OUT at once (`save_pruned`). The CLI only parses the
flags, loads the model, builds the options and shows what the hooks report; this module prints nothing.

Errors: `PruneInputError` and `BudgetError` are bad input (the CLI's exit 2), a `SanaSRError` is a failed run
(exit 1); a gate that fails or cannot run still writes OUT and says so in `PruneResult.passed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanasr_cli.errors import ModelDirError, SanaSRError
from sanasr_cli.pruning.prune import PruneOptions, merge_if_needed, protocol_name, prune_model, save_pruned


class PruneInputError(SanaSRError):
    """The asked pruning cannot start with this model or data (a bad --ema, --crop or --calib)."""


@dataclass
class PruneGate:
    """The --validate gate: compare unpruned and pruned on `pairs` (lq/ + hq/)."""

    pairs: Path
    max_drop: float = 0.03
    metrics: tuple[str, ...] = ("psnr", "ssim")
    protocol: str = "full"
    color_fix: str = "none"
    keep_text_encoder: bool = False  # True: the text encoder stays on the accelerator during the gate


@dataclass
class PruneJob:
    """What `run_prune` needs beside `PruneOptions` (the pruning itself): where from, where to, how checked.

    rule / tagger: the prompt rule and its tagger for calibration and the gate (Eq. 12: the model's rule).
    """

    output: Path
    source_model: str
    calib: list[Path] = field(default_factory=list)
    crop: int = 512
    ema: bool = False
    overwrite: bool = False
    gate: PruneGate | None = None
    rule: Any = None
    tagger: Any = None


def _no_status(_text: str):
    return contextlib.nullcontext()


def _no_steps(_total: int):
    return contextlib.nullcontext(lambda _record: None)


@dataclass
class PruneHooks:
    """How a front end follows the run. note(text): one line of information. status(text): a context manager
    around a slow stage. calibrating(steps): a context manager yielding on_step(StepRecord). pruned(report):
    the selection is known (before the gate)."""

    note: Callable[[str], None] = lambda _text: None
    status: Callable[[str], Any] = _no_status
    calibrating: Callable[[int], Any] = _no_steps
    pruned: Callable[[Any], None] = lambda _report: None


@dataclass
class PruneResult:
    pruned: Any  # the pruned transformer
    report: Any  # PruneReport, as written to OUT/prune_report.json
    output: Path
    merged: dict | None = None  # the adapter merge record, when one was merged
    validation: Any = None  # ValidationResult of the gate
    passed: bool = True  # False when the gate failed or could not run (OUT is written all the same)


def _calibration(model, options: PruneOptions, job: PruneJob, hooks: PruneHooks):
    """The fisher strategy's calibration batches and LPIPS module; (None, None) for the others."""
    from sanasr_cli.training.losses import PerceptualLoss

    if options.strategy != "fisher":
        if job.calib:
            hooks.note(f"[yellow]note:[/] --calib is not used by --strategy {options.strategy} (only fisher uses it)")
        return None, None
    factor = model.codec.factor
    if job.crop % factor:
        raise PruneInputError(f"--crop {job.crop} must be a multiple of the VAE factor {factor}")
    from sanasr_cli.pruning.calib_data import calibration_batches

    try:
        batches, n_images = calibration_batches(
            job.calib, job.rule, crop=job.crop, seed=options.seed, tagger=job.tagger, source=options.prompt_source
        )
    except Exception as e:  # noqa: BLE001 - the datasets raise one clear DatasetError line per problem
        raise PruneInputError(f"calibration data: {e}") from None
    hooks.note(
        f"calibration: {n_images} images, K = {options.steps} steps, crop {job.crop}, on {model.device}, "
        f"prompts from the {options.prompt_source.upper()} crop"
    )
    if not options.weights.perceptual:
        return batches, None
    random_backbone = model.description.random_weights
    if random_backbone:
        hooks.note("[yellow]note:[/] random-weight model: LPIPS uses an untrained VGG (no download).")
    try:
        return batches, PerceptualLoss(random_backbone=random_backbone).to(model.device)
    except RuntimeError as e:
        raise SanaSRError(f"{e} (or pass --lambda-p 0)") from None


def _validate(model, pruned, report, job: PruneJob, hooks: PruneHooks):
    """The gate: (ValidationResult or None, passed); report.validation is filled either way."""
    from sanasr_cli.pruning.validate import validate_pruning

    gate = job.gate
    try:
        with hooks.status(f"validating on {gate.pairs} (unpruned vs pruned, {gate.protocol} protocol) ..."):
            result = validate_pruning(
                model, pruned, gate.pairs, max_drop=gate.max_drop, rule=job.rule, tagger=job.tagger,
                metrics=list(gate.metrics), protocol=gate.protocol, color_fix=gate.color_fix,
                keep_text_encoder=gate.keep_text_encoder,
            )  # fmt: skip
    except SanaSRError as e:  # the gate cannot decide: say why, still write OUT, exit 1
        report.validation = {"error": str(e), "passed": False}
        hooks.note(f"[red]validation could not run:[/] {e}")
        return None, False
    report.validation = result.to_dict()
    return result, result.passed


def run_prune(model, options: PruneOptions, job: PruneJob, hooks: PruneHooks | None = None) -> PruneResult:
    """Prune a loaded SanaSR to `options.budget`, gate it, write `job.output`. Nothing is written before the
    end, so an interrupted run leaves no OUT. `options.prompt_source` None: the model's protocol."""
    from sanasr_cli.pruning.blocks import block_sizes
    from sanasr_cli.pruning.select import check_budget

    hooks = hooks or PruneHooks()
    try:
        merged = merge_if_needed(model, ema=job.ema)
    except ModelDirError as e:  # e.g. --ema on a model without an EMA adapter
        raise PruneInputError(str(e)) from None
    if merged:
        hooks.note(f"merged the LoRA adapter ({merged['merged_from']}/) before pruning")
    check_budget(block_sizes(model.transformer), options.budget)  # BudgetError before any calibration
    if options.prompt_source is None:  # tag what the model's training tagged (App. A.1)
        options.prompt_source = protocol_name(model.description)
    if options.calib_source is None and job.calib:
        options.calib_source = ", ".join(map(str, job.calib))
    batches, perceptual = _calibration(model, options, job, hooks)
    with hooks.calibrating(options.steps if options.strategy == "fisher" else 0) as on_step:
        pruned, report = prune_model(
            model, options, batches, perceptual, on_step=on_step, source_model=job.source_model
        )
    if report.calibration is not None:
        report.calibration["prompt_rule"] = job.rule.to_dict()
    hooks.pruned(report)
    validation, passed = _validate(model, pruned, report, job, hooks) if job.gate else (None, True)
    with hooks.status(f"writing {job.output} ..."):
        save_pruned(model, pruned, report, job.output, overwrite=job.overwrite)
    return PruneResult(pruned, report, Path(job.output), merged, validation, passed)
