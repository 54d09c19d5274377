"""The validation gate of App. B: run the unpruned and pruned models on the same pairs and compare metrics.

Both models go through `sanasr eval`'s end-to-end path (`evaluation.model_eval.upscale_pairs`: the upscale
pipeline writes PNGs, then `evaluation.metrics.evaluate_pairs` scores them under the full-image or 256x256
patch protocol), so the gate measures what `sanasr eval` would report: the paper's pipeline, LQ input tagged, no
colour fix unless asked. Each metric's relative drop,
(before - after) / |before| (sign flipped for lower-is-better metrics), must stay within `max_drop` (0.03 in
the paper). Default metrics: PSNR and SSIM on the Y channel (pyiqa, no downloads).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sanasr_cli.errors import SanaSRError

DEFAULT_METRICS = ("psnr", "ssim")


class PairsError(SanaSRError):
    """The validation folder is not a paired folder (lq/ and hq/ with matching file stems)."""


@dataclass
class ValidationResult:
    pairs: int
    max_drop: float
    protocol: str
    color_fix: str
    before: dict[str, float]  # metric -> mean over pairs, unpruned model
    after: dict[str, float]  # metric -> mean over pairs, pruned model
    drop: dict[str, float]  # metric -> relative drop (positive = worse)
    failed: list[str] = field(default_factory=list)  # metrics whose drop exceeds max_drop
    variants: dict[str, str] = field(default_factory=dict)  # metric -> the exact pyiqa call

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def list_pairs(folder: str | Path):
    """ImagePairs (sr = the LQ file, hr = its reference) of FOLDER/lq and FOLDER/hq, matched by file stem."""
    from sanasr_cli.evaluation.pairing import PairingError, pair_folders

    folder = Path(folder)
    if not (folder / "lq").is_dir() or not (folder / "hq").is_dir():
        raise PairsError(f"{folder} must contain lq/ and hq/ folders with images of the same names")
    try:
        return pair_folders(folder / "lq", folder / "hq", sr_suffixes=(), hr_suffixes=(), sr_what="lq/")
    except PairingError as e:
        raise PairsError(f"--validate {folder}: {e}") from None


def relative_drop(before: float, after: float, lower_better: bool = False) -> float:
    """Relative degradation: positive when `after` is worse than `before`."""
    if before == 0:
        return 0.0 if after == before else float("inf")
    change = (before - after) / abs(before)
    return -change if lower_better else change


def validate_pruning(
    model,
    pruned_transformer,
    pairs_dir,
    max_drop: float = 0.03,
    rule=None,
    tagger=None,
    metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS,
    protocol: str = "full",
    scale: float = 4.0,
    on_image: Callable | None = None,
    color_fix: str = "none",
    keep_text_encoder: bool = False,
) -> ValidationResult:
    """Score `model` as it is, then with `pruned_transformer` in place of its transformer, on the same pairs.

    rule / tagger: the prompt rule and its built tagger (default: the model's rule); the LQ input is tagged, as
    at inference. color_fix: "none" by default, the paper's pipeline (as `sanasr eval --model`). The model's own
    transformer is put back afterwards. On an accelerator the validation prompts are encoded once, first, and the
    text encoder moves to the CPU for both runs, unless `keep_text_encoder`. Raises PairsError for a folder
    without pairs, and SanaSRError when an image fails or a metric cannot be built (the gate cannot decide
    without every score).
    """
    from sanasr_cli.evaluation.metrics import build_metric, evaluate_pairs, parse_metrics
    from sanasr_cli.evaluation.model_eval import upscale_pairs
    from sanasr_cli.pipeline.upscale import UpscaleOptions, prompts_first, prompts_for_files
    from sanasr_cli.prompts.rule import tagger_from_rule

    pairs = list_pairs(pairs_dir)
    specs = parse_metrics(list(metrics))
    built = {s.name: build_metric(s, "cpu") for s in specs}  # MetricUnavailable now, before any restoring
    rule = rule or model.description.prompt
    options = UpscaleOptions(
        scale=scale,
        prompt_rule=rule,
        tagger=tagger or tagger_from_rule(rule),
        color_fix=color_fix,
        keep_text_encoder=keep_text_encoder,
    )
    original = model.restorer.transformer
    means = {}
    # both models restore with the same encoded prompts, encoded once before the text encoder leaves the GPU
    prompts = prompts_for_files(options.tagger, [p.sr for p in pairs], options)
    with (
        tempfile.TemporaryDirectory(prefix="sanasr-validate-") as tmp,
        prompts_first(model, [p for _, p in prompts.values()], keep_text_encoder),
    ):
        for name, transformer in (("unpruned", original), ("pruned", pruned_transformer)):
            model.restorer.transformer = transformer.to(device=model.device)
            try:
                restored, failed = upscale_pairs(
                    model, pairs, Path(pairs_dir) / "lq", Path(tmp) / name, options, on_done=on_image
                )
            finally:
                model.restorer.transformer = original
            if failed:
                raise SanaSRError(f"validation ({name} model): {failed[0].error}")
            result = evaluate_pairs(restored, specs, protocol=protocol, built=built)
            if result.failed_images:
                raise SanaSRError(f"validation ({name} model): {result.failed_images[0].error}")
            means[name] = result.means
    before, after = means["unpruned"], means["pruned"]
    drop = {s.name: relative_drop(before[s.name], after[s.name], s.lower_better) for s in specs}
    failed_metrics = [k for k, d in drop.items() if d > max_drop]
    return ValidationResult(
        len(pairs),
        max_drop,
        protocol,
        color_fix,
        before,
        after,
        drop,
        failed_metrics,
        {s.name: s.variant for s in specs},
    )
