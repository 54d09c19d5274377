"""The validation gate of App. B: run the unpruned and pruned models on the same pairs and compare metrics.

Each monitored metric's relative drop, (before - after) / |before| for higher-is-better metrics, must stay
within `max_drop` (0.03 in the paper). Metrics: pyiqa's PSNR and SSIM on the Y channel of YCbCr (no download).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sanasr_cli.errors import SanaSRError

# NOTE: `sanasr eval` (sanasr_cli/evaluation/) was not on main when this was written; these two pyiqa metrics
# are created here directly. Switch to its metric functions once they land.
METRICS = {"psnr": dict(test_y_channel=True), "ssim": dict(test_y_channel=True)}


class PairsError(SanaSRError):
    """The validation folder is not a paired folder (lq/ and hq/ with matching file stems)."""


@dataclass
class ValidationResult:
    pairs: int
    max_drop: float
    before: dict[str, float]  # metric -> mean over pairs, unpruned model
    after: dict[str, float]  # metric -> mean over pairs, pruned model
    drop: dict[str, float]  # metric -> relative drop (positive = worse)
    failed: list[str] = field(default_factory=list)  # metrics whose drop exceeds max_drop

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def list_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(lq, hq) paths of a paired folder: FOLDER/lq/<stem>.* and FOLDER/hq/<stem>.*, matched by stem."""
    from sanasr_cli.data.io import list_images

    folder = Path(folder)
    lq_dir, hq_dir = folder / "lq", folder / "hq"
    if not lq_dir.is_dir() or not hq_dir.is_dir():
        raise PairsError(f"{folder} must contain lq/ and hq/ folders with images of the same names")
    hq = {p.stem: p for p in list_images(hq_dir)}
    pairs = [(p, hq[p.stem]) for p in list_images(lq_dir) if p.stem in hq]
    if not pairs:
        raise PairsError(f"{folder}: no lq/ image has an hq/ image of the same name")
    return pairs


def relative_drop(before: float, after: float, lower_better: bool = False) -> float:
    """Relative degradation: positive when `after` is worse than `before`."""
    if before == 0:
        return 0.0 if after == before else float("inf")
    change = (before - after) / abs(before)
    return -change if lower_better else change


def _score_model(
    model, pairs, rule, tagger, metrics, on_image: Callable[[], None] | None
) -> dict[str, float]:
    from sanasr_cli.data.io import read_image
    from sanasr_cli.pipeline.upscale import upsample_bicubic
    from sanasr_cli.prompts.rule import prompt_for_image

    sums = dict.fromkeys(metrics, 0.0)
    for lq_path, hq_path in pairs:
        lq, _ = read_image(lq_path)
        hq, _ = read_image(hq_path)
        x = upsample_bicubic(lq, hq.shape[-2] / lq.shape[-2])
        h, w = min(x.shape[-2], hq.shape[-2]), min(x.shape[-1], hq.shape[-1])
        x, hq = x[..., :h, :w], hq[..., :h, :w]
        prompt = prompt_for_image(rule, lq, lq_path, tagger)
        sr = model.restore(x[None], [prompt]).cpu()
        for name, metric in metrics.items():
            sums[name] += float(metric(sr, hq[None]).item())
        if on_image:
            on_image()
    return {k: v / len(pairs) for k, v in sums.items()}


def validate_pruning(
    model, pruned_transformer, pairs_dir, max_drop: float = 0.03, rule=None, tagger=None, on_image=None
) -> ValidationResult:
    """Score `model` as it is, then with `pruned_transformer` in place of its transformer, on the same pairs.

    rule / tagger: the prompt rule and its built tagger (default: the model's rule). The model's own
    transformer is put back afterwards. Raises PairsError for a folder without pairs.
    """
    import pyiqa

    from sanasr_cli.prompts.rule import tagger_from_rule

    pairs = list_pairs(pairs_dir)
    metrics = {name: pyiqa.create_metric(name, device="cpu", **opts) for name, opts in METRICS.items()}
    rule = rule or model.description.prompt
    tagger = tagger or tagger_from_rule(rule)
    original = model.restorer.transformer
    with torch.no_grad():
        before = _score_model(model, pairs, rule, tagger, metrics, on_image)
        model.restorer.transformer = pruned_transformer.to(device=model.device)
        try:
            after = _score_model(model, pairs, rule, tagger, metrics, on_image)
        finally:
            model.restorer.transformer = original
    drop = {k: relative_drop(before[k], after[k], metrics[k].lower_better) for k in metrics}
    failed = [k for k, d in drop.items() if d > max_drop]
    return ValidationResult(len(pairs), max_drop, before, after, drop, failed)
