"""`sanasr prune` as numbered stages (Algorithm 2): merge, account, score, select, remove, count, save.

1. merge_if_needed      LoRA adapter -> dense merged backbone (PEFT merge)
2. block_sizes          P_l, P_fix; the budget is checked before any calibration
3. score_blocks         fisher: K calibration steps -> F (Eq. 23) -> S_l (Eq. 24); or a baseline's scores
4. greedy_select        Eq. 11, first and last blocks kept
5. remove_blocks        a plain SanaTransformer2DModel with num_layers = |K|
6. transformer_macs     before / after, FlopCounterMode on the meta device
7. save_pruned          model directory + prune_report.json, atomically (nothing on disk before this)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sanasr_cli.models.merge import has_adapter, merge_model
from sanasr_cli.pruning.blocks import block_sizes, count_parameters, remove_blocks
from sanasr_cli.pruning.calibrate import CalibrationBatch, StepRecord, calibrate_fisher
from sanasr_cli.pruning.macs import transformer_macs
from sanasr_cli.pruning.report import REPORT_FILE, BlockRecord, PruneReport
from sanasr_cli.pruning.saliency import (
    DEFAULT_EPS_P,
    fisher_block_saliency,
    fisher_statistics,
    magnitude_block_saliency,
)
from sanasr_cli.pruning.select import STRATEGIES, check_budget, greedy_select, random_scores, tail_scores
from sanasr_cli.training.losses import LossWeights, PerceptualLoss, PromptProtocol


@dataclass
class PruneOptions:
    budget: int
    budget_text: str = ""
    strategy: str = "fisher"
    steps: int = 400  # K
    seed: int = 0
    eps_p: float = DEFAULT_EPS_P
    weights: LossWeights = field(default_factory=LossWeights)  # lambda_2, lambda_p, lambda_a (consistency unused)
    mac_image_size: int = 512  # MACs are reported for one forward at this square image size
    calib_source: str | None = None  # recorded in the report
    # the image calibration prompts were made from ("hq" / "lq"); None: the model's protocol (protocol_name)
    prompt_source: str | None = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy '{self.strategy}' (use {', '.join(STRATEGIES)})")
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {self.steps}")


def protocol_name(description) -> str:
    """The prompt protocol the model was trained with: the newest `train` record of its history, else read
    from tau_g (999: LQ-prompt, otherwise HQ-prompt, App. B)."""
    for record in reversed(description.history):
        if record.get("command") == "train" and record.get("protocol") in ("hq", "lq"):
            return record["protocol"]
    return "lq" if description.tau_g >= 999 else "hq"


def protocol_for(description) -> PromptProtocol:
    """The alignment range of the model's prompt protocol (`protocol_name`), at the model's own tau_g."""
    proto = PromptProtocol.named(protocol_name(description))
    proto.tau_g = description.tau_g
    return proto


def merge_if_needed(model, ema: bool = False) -> dict | None:
    """Stage 1: Algorithm 2 prunes the merged dense model (the EMA adapter's weights when `ema`)."""
    if has_adapter(model.transformer):
        record = merge_model(model, ema=ema)
        model.description.history.append({"command": "merge-lora", "input": "(prune)", "ema": ema, "scale": 1.0})
        return record
    return None


def score_blocks(
    model,
    options: PruneOptions,
    batches: Iterator[CalibrationBatch] | None,
    perceptual: PerceptualLoss | None,
    on_step: Callable[[StepRecord], None] | None = None,
) -> tuple[list[float], dict | None]:
    """Stage 3: one score per block (higher = keep first) and, for fisher, the calibration record."""
    transformer = model.transformer
    n = len(transformer.transformer_blocks)
    if options.strategy == "tail":
        return tail_scores(n), None
    if options.strategy == "random":
        return random_scores(n, options.seed), None
    if options.strategy == "magnitude":
        return magnitude_block_saliency(transformer), None
    if batches is None:
        raise ValueError("the fisher strategy needs calibration data (--calib)")
    protocol = protocol_for(model.description)
    generator = torch.Generator(device=model.device).manual_seed(options.seed)
    fisher, steps = calibrate_fisher(
        model, batches, options.steps, options.weights, protocol, perceptual, generator, on_step=on_step
    )
    scores = fisher_block_saliency(transformer, fisher, options.eps_p)
    losses = [s.loss for s in steps]
    record = {
        "source": options.calib_source,
        "steps": len(steps),
        "batch_size": max(s.batch for s in steps),
        "protocol": asdict(protocol),
        "prompt_source": options.prompt_source or protocol_name(model.description),
        "loss_weights": {
            "pixel": options.weights.pixel,
            "perceptual": options.weights.perceptual,
            "align": options.weights.align,
        },
        "dtype": str(model.dtype).removeprefix("torch."),
        "mean_loss": sum(losses) / len(losses),
        "timesteps": [s.timestep for s in steps],
        "omegas": [s.omega for s in steps],
        "losses": losses,
        "fisher": fisher_statistics(transformer, fisher, options.eps_p),
    }
    return scores, record


def prune_model(
    model,
    options: PruneOptions,
    batches: Iterator[CalibrationBatch] | None = None,
    perceptual: PerceptualLoss | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    source_model: str | None = None,
):
    """Stages 1-6 on a loaded SanaSR. Returns (pruned transformer, report); nothing is written.

    The model keeps its (merged) unpruned transformer, so the two can be compared (`validate_pruning`).
    Raises BudgetError before any calibration when the budget cannot be met or leaves nothing to prune.
    """
    merge_if_needed(model)
    transformer = model.transformer
    sizes = block_sizes(transformer)
    check_budget(sizes, options.budget)
    scores, calibration = score_blocks(model, options, batches, perceptual, on_step)
    selection = greedy_select(scores, sizes, options.budget)
    pruned = remove_blocks(transformer, list(selection.kept))
    if count_parameters(pruned) != selection.params:  # the report's count must be the saved model's
        raise RuntimeError(f"pruned: {count_parameters(pruned)} parameters, expected {selection.params}")

    factor = model.codec.factor
    size = options.mac_image_size
    latent = -(-size // factor)
    text_len = model.prompts.max_length
    macs_before = transformer_macs(transformer.config, latent, latent, text_len)
    macs_after = transformer_macs(pruned.config, latent, latent, text_len)
    report = PruneReport(
        strategy=options.strategy,
        budget=options.budget,
        budget_text=options.budget_text or str(options.budget),
        steps=options.steps if options.strategy == "fisher" else 0,
        seed=options.seed,
        kept=list(selection.kept),
        removed=[i for i in range(sizes.num_blocks) if i not in selection.kept],
        blocks=[BlockRecord(i, sizes.block[i], float(scores[i]), i in selection.kept) for i in range(sizes.num_blocks)],
        params_fixed=sizes.fixed,
        params_before=sizes.total,
        params_after=selection.params,
        macs_before=macs_before,
        macs_after=macs_after,
        macs_input={
            "image": [size, size],
            "latent": [latent, latent],
            "text_tokens": text_len,
            "batch": 1,
            "counted_with": "torch.utils.flop_counter.FlopCounterMode on the meta device, MACs = FLOPs / 2, "
            "transformer forward only",
        },
        eps_p=options.eps_p if options.strategy == "fisher" else None,
        fisher=calibration.pop("fisher") if calibration else None,
        calibration=calibration,
        source_model=source_model,
    )
    return pruned, report


def save_pruned(model, pruned, report: PruneReport, out: str | Path, overwrite: bool = False) -> Path:
    """Stage 7: write OUT (sanasr.json, transformer/ with the kept blocks, prune_report.json) atomically, the
    transformer in the dtype its source is stored in (`model.info["stored_dtype"]`), whatever the run's precision."""
    from sanasr_cli.models.sanasr import save_model_dir

    desc = model.description
    desc.pruning = report.summary_record()
    desc.history.append(
        {
            "command": "prune",
            "input": report.source_model,
            "strategy": report.strategy,
            "budget": report.budget,
            "kept": report.kept,
        }
    )
    stored = model.info.get("stored_dtype")  # the source's dtype: an fp32 model pruned in a bf16 run stays fp32
    if stored is not None and pruned.dtype != stored:
        pruned.to(stored)  # (its values are the run's: bf16-rounded there)
    original = model.restorer.transformer
    model.restorer.transformer = pruned
    try:
        return save_model_dir(
            model,
            out,
            desc,
            save_transformer=True,
            overwrite=overwrite,
            extra_files={REPORT_FILE: report.to_json()},
        )
    finally:
        model.restorer.transformer = original
