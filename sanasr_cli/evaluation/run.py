"""`run_eval(pairs, options, hooks) -> EvalRun` and `run_rank(...) -> RankRun`: the whole of `sanasr eval`
once the flags are parsed, the folders paired and (for --model) the model loaded. This module prints nothing;
the CLI shows what the hooks report and maps errors to exit codes.

- score existing outputs: `run_eval(pairs, EvalOptions(specs, ...))`
- run a model, then score its outputs: `EvalOptions(..., model_run=ModelRun(model, upscale_options, lq_dir,
  info))`; the pairs are then (LQ input, reference). A peer (another x4 restorer: `--peer`) runs the same way with
  `peer_run=PeerRun(peer, info)`: its outputs are read, written and scored exactly as a model's. The model (or
  peer) is released (`model_run.model = None`) once its outputs are written, so the metrics get its memory back.
- rank the checkpoints of a training run: `run_rank(run_dir, lq_pairs, lq_dir, spec, options, hooks, ...)`.

Outputs of a model go to `options.save_dir`, or to a temporary folder removed afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sanasr_cli.evaluation.metrics import EvalResult, MetricSpec, evaluate_pairs
from sanasr_cli.evaluation.pairing import ImagePair


def _no_bar(_label: str, _total: int):
    return contextlib.nullcontext(lambda _item: None)


@dataclass
class EvalHooks:
    """progress(label, total): a context manager yielding a callback called once per item (an UpscaleRecord
    for "upscale", an ImageScores for "score", a CheckpointScore for "checkpoints")."""

    progress: Callable[[str, int], Any] = _no_bar


@dataclass
class ModelRun:
    """A loaded model to run on the LQ side first, with the UpscaleOptions it runs with; `info` is recorded in
    the report under "model" (followed by "outputs", "prompt_rule" and "user_prompt")."""

    model: Any
    upscale: Any
    lq_dir: Path
    info: dict = field(default_factory=dict)


@dataclass
class PeerRun:
    """A loaded peer (sanasr_cli.peers.Peer) to run on the LQ side first; `info` is recorded under "model"."""

    peer: Any
    info: dict = field(default_factory=dict)


@dataclass
class EvalOptions:
    metrics: list[MetricSpec]
    protocol: str = "full"
    device: torch.device | str = "cpu"
    save_dir: Path | None = None  # where a model's outputs are kept (None: a temporary folder)
    model_run: ModelRun | None = None
    peer_run: PeerRun | None = None  # instead of model_run: a peer restores the LQ side


@dataclass
class EvalRun:
    result: EvalResult
    model_info: dict | None = None
    failed_upscales: list = field(default_factory=list)  # UpscaleRecords of inputs the model failed on

    @property
    def ok(self) -> bool:
        return self.result.ok and not self.failed_upscales

    def report(self) -> dict:
        """The --json report."""
        from sanasr_cli.evaluation.report import eval_report

        extra = {"failed_upscales": [r.to_dict() for r in self.failed_upscales]}
        return eval_report(self.result, model=self.model_info, extra=extra)


@contextlib.contextmanager
def output_dir(save_dir: Path | None):
    """`save_dir`, or a temporary folder removed on leaving."""
    if save_dir is not None:
        yield Path(save_dir)
        return
    tmp = Path(tempfile.mkdtemp(prefix="sanasr-eval-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def weights_notice(specs: list[MetricSpec]) -> str | None:
    """One line for before the metrics are built: which of them need downloaded weights (read from the cache when
    there, else fetched, else reported unavailable) and which run offline; None when none needs any."""
    from sanasr_cli.evaluation.metrics import METRICS

    need = [s.name for s in specs if s.needs_weights]
    if not need:
        return None
    here = [s.name for s in specs if not s.needs_weights]
    offline = [name for name, spec in METRICS.items() if not spec.needs_weights]
    return (
        f"{', '.join(need)} need downloaded weights (from the cache when there, else fetched; unavailable "
        f"offline){'; ' + ', '.join(here) + ' run offline' if here else ''} (offline metrics: {', '.join(offline)})"
    )


def _offline_unless_reachable(specs: list[MetricSpec]) -> None:
    """A metric backbone fetched from the hub (timm's, for MUSIQ and MANIQA) fails at once where the hub cannot
    be reached, not after a minute of retries."""
    if any(s.needs_weights for s in specs):
        from sanasr_cli.hub import offline_unless_reachable

        offline_unless_reachable()


def run_eval(pairs: list[ImagePair], options: EvalOptions, hooks: EvalHooks | None = None) -> EvalRun:
    """Score `pairs` (restored, reference) with `options.metrics`; with `options.model_run`, first restore the
    pairs' LQ side with the model (`upscale_pairs`, the same pipeline as `sanasr upscale`)."""
    from sanasr_cli.evaluation.model_eval import peer_upscale_pairs, upscale_pairs

    hooks = hooks or EvalHooks()
    run, peer_run = options.model_run, options.peer_run
    restores = run is not None or peer_run is not None
    with output_dir(options.save_dir) if restores else contextlib.nullcontext() as out_dir:
        model_info, failed = None, []
        if peer_run is not None:
            model_info = {**peer_run.info, "outputs": str(out_dir)}
            with hooks.progress("upscale", len(pairs)) as on_done:
                pairs, failed = peer_upscale_pairs(peer_run.peer, pairs, out_dir, on_done=on_done)
            peer_run.peer = None  # released: the metrics get its memory
        elif run is not None:
            model_info = {
                **run.info, "outputs": str(out_dir), "prompt_rule": run.upscale.prompt_rule.to_dict(),
                "user_prompt": run.upscale.user_prompt,
            }  # fmt: skip
            with hooks.progress("upscale", len(pairs)) as on_done:
                pairs, failed = upscale_pairs(run.model, pairs, run.lq_dir, out_dir, run.upscale, on_done=on_done)
            run.model = None  # released: the metrics get its memory
        _offline_unless_reachable(options.metrics)
        with hooks.progress("score", len(pairs)) as on_image:
            result = evaluate_pairs(
                pairs, options.metrics, protocol=options.protocol, device=options.device, on_image=on_image
            )
    return EvalRun(result, model_info, failed)


@dataclass
class RankRun:
    run_dir: Path
    metric: MetricSpec
    protocol: str
    color_fix: str
    num_images: int
    ranked: list  # CheckpointScore, best first, failed ones last

    @property
    def ok(self) -> bool:
        return not any(s.error for s in self.ranked)

    def report(self) -> dict:
        """The --json report of a ranking."""
        from sanasr_cli.evaluation.report import protocol_text, versions

        rows = [
            {"rank": s.rank, "checkpoint": s.checkpoint, "step": s.step, "score": s.score, "error": s.error}
            for s in self.ranked
        ]
        return {
            "run_dir": str(self.run_dir),
            "metric": self.metric.name,
            "variant": self.metric.to_dict(),
            "protocol": self.protocol,
            "protocol_description": protocol_text(self.protocol),
            "color_fix": self.color_fix,
            "num_images": self.num_images,
            "ranking": rows,
            "versions": versions(),
        }


def run_rank(
    run_dir: Path,
    lq_pairs: list[ImagePair],
    lq_dir: Path,
    metric: MetricSpec,
    options: EvalOptions,
    hooks: EvalHooks | None = None,
    dtype: torch.dtype = torch.float32,
    base: str | None = None,
    options_for: Callable | None = None,
    color_fix: str = "none",
) -> RankRun:
    """Rank every RUN_DIR/checkpoint-*/ by `metric` on the same LQ images (`rank_checkpoints`); ModelDirError
    when the run holds no checkpoint. `options_for(model)` gives each checkpoint's UpscaleOptions."""
    from sanasr_cli.evaluation.model_eval import find_checkpoints, rank_checkpoints

    hooks = hooks or EvalHooks()
    checkpoints = find_checkpoints(run_dir)
    _offline_unless_reachable([metric])
    with output_dir(options.save_dir) as out_dir, hooks.progress("checkpoints", len(checkpoints)) as on_checkpoint:
        ranked, _ = rank_checkpoints(
            run_dir, lq_pairs, lq_dir, metric, out_dir, protocol=options.protocol, device=options.device,
            dtype=dtype, base=base, options_for=options_for, on_checkpoint=on_checkpoint,
        )  # fmt: skip
    return RankRun(Path(run_dir), metric, options.protocol, color_fix, len(lq_pairs), ranked)
