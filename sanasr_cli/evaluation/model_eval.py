"""Evaluating models end to end: LQ folder -> `upscale_files` (the same pipeline as `sanasr upscale`) ->
scores,
and ranking the checkpoints of a training run (paper App. B: checkpoints are chosen on a held-out set).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sanasr_cli.errors import ModelDirError, SanaSRError
from sanasr_cli.evaluation.metrics import EvalResult, MetricSpec, evaluate_pairs
from sanasr_cli.evaluation.pairing import ImagePair
from sanasr_cli.models.description import CHECKPOINT_RE as _CHECKPOINT_RE


def upscale_pairs(
    model,
    lq_pairs: list[ImagePair],
    lq_dir: Path,
    save_dir: Path,
    options,
    on_done: Callable | None = None,
) -> tuple[list[ImagePair], list]:
    """Upscale the LQ side of `lq_pairs` (sr = LQ file, hr = reference) into `save_dir` with `upscale_files`.

    Returns (pairs of restored output and reference, failed UpscaleRecords). Output names follow `upscale`:
    `save_dir/<lq stem>.png`.
    """
    from sanasr_cli.pipeline.upscale import upscale_files

    lq_dir, save_dir = Path(lq_dir).resolve(), Path(save_dir).resolve()
    # upscale skips finished outputs (resume); scores must come from this model's outputs only. `redo`, not
    # `overwrite`: a file in the save folder that sanasr did not write is still never replaced
    options = dataclasses.replace(options, redo=True)
    records = upscale_files(model, [p.sr for p in lq_pairs], lq_dir, save_dir, options, on_done=on_done)
    by_input = {Path(r.input): r for r in records}
    out, failed = [], []
    for p in lq_pairs:
        rec = by_input[Path(p.sr)]
        if rec.status == "ok":
            out.append(ImagePair(p.key, Path(rec.output), p.hr))
        else:
            failed.append(rec)
    return out, failed


def peer_upscale_pairs(
    peer,
    lq_pairs: list[ImagePair],
    save_dir: Path,
    max_pixels: int | None = None,
    on_done: Callable | None = None,
) -> tuple[list[ImagePair], list]:
    """`upscale_pairs` for a peer (sanasr_cli.peers.Peer): each LQ read and each output written exactly as
    `upscale_files` reads and writes a model's (the same decoder, colour handling, 8/16-bit and grey outputs,
    `save_dir/<lq stem>.png`, and the ledger: only files sanasr wrote are ever replaced), so scores differ only
    by the restorer. Returns (pairs of output and reference, failed UpscaleRecords)."""
    import time

    from sanasr_cli.data.io import DEFAULT_MAX_PIXELS, read_image, write_image
    from sanasr_cli.errors import ImageReadError
    from sanasr_cli.pipeline.upscale import UpscaleRecord
    from sanasr_cli.safe_files import OutputLedger

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    ledger = OutputLedger(save_dir)
    out, failed = [], []
    for p in lq_pairs:
        target = save_dir / f"{Path(p.sr).stem}.png"
        rec = UpscaleRecord(input=str(p.sr), output=str(target))
        start = time.perf_counter()
        try:
            if (target.exists() or target.is_symlink()) and not ledger.owns(target):
                raise ImageReadError(f"{p.sr}: {target} already exists and was not written by sanasr: left as it is")
            lq, info = read_image(p.sr, max_pixels or DEFAULT_MAX_PIXELS)
            sr = peer(lq[None])[0].cpu()
            alpha = None
            if info.alpha is not None:
                from sanasr_cli.data.resample import upsample_bicubic

                alpha = upsample_bicubic(info.alpha[None], peer.scale)[0].clamp(0, 1)
            write_image(
                target, sr, bit_depth=info.bit_depth, grayscale=info.grayscale, alpha=alpha,
                icc_profile=info.icc_profile, before_replace=ledger.recorder(target),
            )  # fmt: skip
            rec.status, rec.output_size = "ok", (sr.shape[-1], sr.shape[-2])
            out.append(ImagePair(p.key, target, p.hr))
        except (SanaSRError, RuntimeError, ValueError, OSError) as e:
            rec.status = "failed"
            rec.error = str(e) if isinstance(e, SanaSRError) else f"{p.sr}: {type(e).__name__}: {e}"
            failed.append(rec)
        rec.seconds = round(time.perf_counter() - start, 4)
        if on_done:
            on_done(rec)
    return out, failed


def check_save_dir(save_dir: Path, *inputs: Path | None) -> None:
    """Outputs must never overwrite an input: refuse a save folder that is (or holds) an input folder."""
    s = Path(save_dir).resolve()
    for d in inputs:
        if d is None:
            continue
        d = Path(d).resolve()
        if s == d or d.is_relative_to(s) or s.is_relative_to(d):
            raise SanaSRError(f"--save-dir {save_dir} overlaps the input folder {d}; choose a separate folder")


@dataclass
class CheckpointScore:
    checkpoint: str
    step: int
    score: float | None = None
    means: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None
    rank: int | None = None


def find_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every RUN_DIR/checkpoint-<step>/ folder, by step; ModelDirError when none of them
    holds a model description. A checkpoint folder without one is listed too: ranking reports it as failed
    rather than leaving it out unsaid."""
    from sanasr_cli.models.description import is_model_dir

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelDirError(f"run folder {run_dir} does not exist")
    found = []
    for d in run_dir.iterdir():
        m = _CHECKPOINT_RE.match(d.name)
        if m and d.is_dir() and not d.is_symlink():
            found.append((int(m.group(1)), d))
    if not any(is_model_dir(d) for _, d in found):
        raise ModelDirError(
            f"{run_dir} holds no checkpoint-<step>/ folders with sanasr.json (as written by `sanasr train`)"
        )
    return sorted(found)


def rank_checkpoints(
    run_dir: Path,
    lq_pairs: list[ImagePair],
    lq_dir: Path,
    metric: MetricSpec,
    save_root: Path,
    protocol: str = "full",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    base: str | None = None,
    options_for: Callable | None = None,
    on_checkpoint: Callable[[CheckpointScore], None] | None = None,
    on_image: Callable | None = None,
) -> tuple[list[CheckpointScore], dict[int, EvalResult]]:
    """Score every checkpoint of a run on the same images with one metric; returns them best first.

    Each checkpoint is a model directory; its outputs go to `save_root/checkpoint-<step>/`.
    `options_for(model)`
    gives the UpscaleOptions for a loaded model (default: the model's own prompt rule, x4, no colour fix: the
    paper's pipeline, as `sanasr eval`).
    """
    from sanasr_cli.evaluation.metrics import build_metric
    from sanasr_cli.models.description import is_model_dir
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pipeline.upscale import UpscaleOptions

    built = {metric.name: build_metric(metric, device)}  # MetricUnavailable now, before any upscaling
    scores, results = [], {}
    for step, folder in find_checkpoints(run_dir):
        cs = CheckpointScore(checkpoint=str(folder), step=step)
        try:
            if not is_model_dir(folder):
                raise ModelDirError(
                    f"{folder} has no sanasr.json: not a model directory (a save that did not finish, or a "
                    "folder `sanasr train` did not write)"
                )
            model = load_model(folder, device=device, dtype=dtype, base=base)
            options = (
                options_for(model)
                if options_for
                else UpscaleOptions(prompt_rule=model.description.prompt, color_fix="none")
            )
            sr_pairs, failed = upscale_pairs(
                model, lq_pairs, lq_dir, Path(save_root) / folder.name, options, on_done=on_image
            )
            del model
            if failed:
                raise SanaSRError(f"{len(failed)} image(s) failed to upscale, first: {failed[0].error}")
            result = evaluate_pairs(sr_pairs, [metric], protocol=protocol, device=device, built=built)
            if result.unavailable:
                raise SanaSRError(result.unavailable[metric.name])
            results[step] = result
            cs.means = result.means
            cs.score = cs.means.get(metric.name)
        except SanaSRError as e:
            cs.error = str(e)
        except (RuntimeError, ValueError, OSError) as e:  # e.g. out of memory: this row fails, the others run
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            cs.error = f"{type(e).__name__}{': ' + first if first else ''}"
        scores.append(cs)
        if on_checkpoint:
            on_checkpoint(cs)
    ranked = sorted(
        (s for s in scores if s.score is not None),
        key=lambda s: (s.score if metric.lower_better else -s.score, s.step),
    )
    for i, s in enumerate(ranked, 1):
        s.rank = i
    return ranked + [s for s in scores if s.score is None], results
