"""Upscaling images and folders with a loaded SanaSR.

Per image, in stages:
  1. probe the header -> output path; skip when a complete output is already there (resume)
  2. tag every file in one pass and build the prompts (tagger + user prompt + template); encode them all, then
     the text encoder is freed (unless keep_text_encoder) before anything is restored, on any device
  3. restore at x4: bicubic x4 -> [tiled] DC-AE encode -> [tiled] LinearDiT step (Eq. 4) -> [tiled] decode,
     (a distilled student encoder reads the LQ instead, a student decoder decodes: models/students.py)
     halving the tiles on out-of-memory
  4. colour fix against the bicubic input; resize to round(scale x size) when scale != 4 (the model is x4;
     like Real-ESRGAN's --outscale); alpha upscaled bicubically on its own and re-attached
  5. write atomically in the input's mode (grayscale stays grayscale, 16-bit stays 16-bit, ICC kept)
A file that fails is recorded with a one-line error and the run goes on; each input gives one UpscaleRecord.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from sanasr_cli.data.io import (
    DEFAULT_MAX_PIXELS,
    TEMP_MARK,
    ImageInfo,
    format_for,
    is_complete_image,
    probe_image,
    read_image,
    remove_stale_temps,
    write_image,
)
from sanasr_cli.data.resample import upsample_bicubic
from sanasr_cli.errors import ImageReadError, SanaSRError, UnsafeOutputError
from sanasr_cli.models.sanasr import SanaSR, restore_upsampled
from sanasr_cli.models.tiling import TilePlan, count_tiles, plan_tiles, run_with_oom_retry
from sanasr_cli.pipeline.color import color_fix as apply_color_fix
from sanasr_cli.prompts.rule import PromptRule, tag_files, tagger_from_rule
from sanasr_cli.prompts.taggers import Tagger
from sanasr_cli.prompts.template import build_prompt, clean_tags
from sanasr_cli.safe_files import OutputLedger, atomic_write

MODEL_SCALE = 4  # SANA-SR is an x4 model; other --scale values resize its output
EXTENSIONS = ("png", "auto", "jpg", "webp", "tif")
WRITE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp")  # what --ext auto may keep


def resize_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, H, W) [0, 1] -> (B, C, height, width): bicubic, antialiased when shrinking (--scale < 4)."""
    if image.shape[-2:] == (height, width):
        return image
    return F.interpolate(
        image.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True
    ).clamp_(0, 1)


MAX_SCALE = 16.0  # --scale's upper bound: the model runs at x4, the rest is a resize of its result


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) of the output: exactly round(scale x input size), at least 1."""
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass
class UpscaleOptions:
    scale: float = 4.0
    prompt_rule: PromptRule = field(default_factory=PromptRule)
    user_prompt: str | None = None
    tile: str | int = "auto"  # auto | none | tile side in pixels of the x4 image
    color_fix: str = "wavelet"  # wavelet | adain | none
    batch_size: int = 1
    ext: str = "png"  # png | auto (the input's format) | jpg | webp | tif
    suffix: str = ""
    overwrite: bool = False  # redo finished outputs and replace files sanasr did not write
    redo: bool = False  # redo finished outputs, but never replace a file sanasr did not write (eval)
    max_pixels: int = DEFAULT_MAX_PIXELS
    save_prompts: bool = False
    quality: int = 95  # JPEG / WebP
    tagger: Tagger | None = None  # built from prompt_rule (with the tag cache) when None
    keep_text_encoder: bool = False  # True: the text encoder stays in memory while restoring


@dataclass
class UpscaleRecord:
    """One input's outcome (also a record of the run report)."""

    input: str
    output: str | None = None
    status: str = "pending"  # ok | skipped (done before) | failed | ignored (not an image: see note)
    error: str | None = None
    note: str | None = None  # e.g. why a file was ignored, or "animated GIF: first of N frames"
    input_size: tuple[int, int] | None = None  # (width, height)
    output_size: tuple[int, int] | None = None
    mode: str | None = None  # input mode, e.g. RGB, L, RGBA, CMYK, I;16 (+ bit depth)
    prompt: str | None = None
    tile_plan: dict | None = None
    seconds: float | None = None
    peak_memory_mb: float | None = None
    memory: str | None = None  # what peak_memory_mb measures
    process: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- the tensor path


def restore_x4(
    model: SanaSR,
    lq: torch.Tensor,
    prompts: list[str],
    plan: TilePlan,
    color_fix: str = "wavelet",
    batch_size: int = 1,
) -> torch.Tensor:
    """(B, 3, h, w) LQ in [0, 1] -> (B, 3, 4h, 4w) float32 in [0, 1] on the model's device, per `plan`.

    The prompts come from the pinned encodings when the run encoded them first (`prompts_first`), so the text
    encoder may already be off the accelerator."""
    x = upsample_bicubic(lq.to(model.device), MODEL_SCALE)
    # prefix reused, text positions trimmed; on the restorer's device (the text encoder may be released)
    embeds, mask = model.prompts.encode_for_transformer(prompts, device=model.device)
    sr = restore_upsampled(model, x, embeds, mask, plan, batch_size, lq=lq.to(model.device))
    return apply_color_fix(sr, x, color_fix)


def offloads_text_encoder(model: SanaSR, keep_text_encoder: bool = False) -> bool:
    """Whether a run frees the text encoder after the prompt stage: on any device, unless `keep_text_encoder` or
    the model has no PyTorch text encoder (an ONNX export: its prompt is baked in)."""
    from sanasr_cli.models.text_encoder import PromptEncoder

    return not keep_text_encoder and isinstance(model.prompts, PromptEncoder)


@contextlib.contextmanager
def prompts_first(model: SanaSR, prompts: Iterable[str], keep_text_encoder: bool = False) -> Iterator[None]:
    """Unless the text encoder is kept (`offloads_text_encoder`): encode every prompt of the run now (pinned for
    the block, `PromptEncoder.pinned`; those held since loading or in the disk cache need no encoder), then free
    the encoder, so that restoring has the memory without it (SANA's Gemma-2: 2.6 B parameters, 10.5 GB in fp32,
    5.2 GB in bf16), on an accelerator as on the CPU. A prompt never encoded that comes later builds it again.
    Outputs are the same either way. When encoding them all fails (e.g. out of memory), nothing is freed and
    each batch encodes its own prompts, failing alone."""
    with contextlib.ExitStack() as stack:
        pinned = False
        if offloads_text_encoder(model, keep_text_encoder):
            try:
                stack.enter_context(model.prompts.pinned(list(prompts)))
                pinned = True
            except (RuntimeError, ValueError):
                pass
        if pinned:
            model.release_text_encoder()
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
        yield


def upscale_tensor(
    model: SanaSR,
    lq: torch.Tensor,
    prompt: str,
    scale: float = 4.0,
    tile: str | int = "auto",
    color_fix: str = "wavelet",
    batch_size: int = 1,
    return_plan: bool = False,
):
    """(3, h, w) LQ in [0, 1] -> (3, round(h*scale), round(w*scale)) SR float32 in [0, 1], on the CPU.

    With return_plan, returns (sr, plan) where plan is the TilePlan finally used (after any OOM retries).
    """
    h, w = lq.shape[-2:]
    plan = plan_tiles(model, h * MODEL_SCALE, w * MODEL_SCALE, tile)
    sr, plan = run_with_oom_retry(lambda p: restore_x4(model, lq[None], [prompt], p, color_fix, batch_size), plan)
    ow, oh = output_size(w, h, scale)
    sr = resize_to(sr, oh, ow)[0].cpu()
    return (sr, plan) if return_plan else sr


# ---------------------------------------------------------------- files


def output_path_for(
    image: Path,
    input_root: Path,
    outdir: Path,
    ext: str = "png",
    suffix: str = "",
    in_format: str | None = None,
    has_alpha: bool = False,
) -> Path:
    """OUTDIR/<sub-folders relative to the input folder>/<stem><suffix>.<ext>.

    ext 'auto' keeps the input's format. Transparency needs PNG/WebP/TIFF: an image with alpha asked as jpg
    (or a
    BMP/JPEG input under auto) is written as PNG.
    """
    if input_root.is_dir():  # both absolute, links kept: `photos/a.png` under a resolved `/home/me/photos`
        rel = Path(os.path.abspath(image)).relative_to(os.path.abspath(input_root))
    else:
        rel = Path(image.name)
    if ext == "auto":
        suffix_ext = image.suffix.lower().lstrip(".") or "png"
        if suffix_ext not in WRITE_EXTENSIONS:  # e.g. gif: read, never written
            suffix_ext = "png"
    else:
        suffix_ext = ext
    if has_alpha and format_for(f"x.{suffix_ext}") not in ("PNG", "WEBP", "TIFF"):
        suffix_ext = "png"
    return outdir / rel.parent / f"{rel.stem}{suffix}.{suffix_ext}"


@dataclass
class PlannedOutput:
    input: Path
    output: Path | None = None
    size: tuple[int, int] | None = None  # input (width, height)
    error: str | None = None  # why this input cannot be done (one line naming the file)
    conflict: bool = False  # the error is a clash of paths (not a bad file): commands refuse it up front


def plan_outputs(
    images: Iterable[Path], input_root: Path, outdir: Path, options: UpscaleOptions
) -> list[PlannedOutput]:
    """Stage 1 for every input, before any work: header -> output path, with the guards that keep the
    user's files safe. An output must lie under `outdir` once resolved, may not be (or resolve to) any input
    of the run, and may not be shared by two inputs (all of them fail, naming each other)."""
    from sanasr_cli.safe_files import check_confined, check_name_part

    check_name_part(options.suffix, "--suffix")
    images = [Path(p) for p in images]
    inputs = {p.resolve(): p for p in images}
    plans: list[PlannedOutput] = []
    for path in images:
        plan = PlannedOutput(path)
        plans.append(plan)
        try:
            size, fmt, has_alpha = probe_image(path, options.max_pixels)
            plan.size = size
            out = output_path_for(path, input_root, outdir, options.ext, options.suffix, fmt, has_alpha)
            plan.output = out
            real = check_confined(out, outdir, what=f"{path}: output")
            if real in inputs:
                what = "its own input" if inputs[real] == path else f"the input {inputs[real]}"
                raise UnsafeOutputError(
                    f"{path}: the output {out} would overwrite {what} (choose another -o or --suffix)"
                )
        except UnsafeOutputError as e:
            plan.error, plan.conflict = str(e), True
        except SanaSRError as e:
            plan.error = str(e)
    by_output: dict[Path, list[PlannedOutput]] = {}
    for plan in plans:
        if plan.output is not None and plan.error is None:
            by_output.setdefault(plan.output.resolve(), []).append(plan)
    for group in by_output.values():
        if len(group) > 1:
            names = ", ".join(str(g.input) for g in group)
            for g in group:
                g.error = f"{g.input}: inputs {names} would all be written to {g.output} (rename one)"
                g.conflict = True
    return plans


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated (this image)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return rss_mb, "process peak RSS (whole run so far)"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass
class _Item:
    rec: UpscaleRecord
    path: Path
    out: Path
    lq: torch.Tensor
    info: ImageInfo
    tags: list[str]
    start: float


def upscale_files(
    model: SanaSR,
    images: Iterable[Path],
    input_root: Path,
    outdir: Path,
    options: UpscaleOptions,
    on_done: Callable[[UpscaleRecord], None] | None = None,
    process_index: int = 0,
    on_tile: Callable[[Path, int, int], None] | None = None,
) -> list[UpscaleRecord]:
    """Upscale each image into outdir (see the module docstring); one record per input, in input order.
    on_tile(input, done, total) after each LinearDiT tile of a tiled image (progress within one large image).

    Consecutive untiled images of one size are restored together, `options.batch_size` at a time.
    KeyboardInterrupt propagates (outputs already written stay; the one in flight leaves no file).
    """
    records: list[UpscaleRecord] = []
    pending: list[_Item] = []

    def finish(rec: UpscaleRecord, start: float) -> None:
        rec.seconds = round(time.perf_counter() - start, 4)
        if rec.status != "skipped":
            peak, rec.memory = _peak_memory(model.device)
            rec.peak_memory_mb = round(peak, 1)
        if on_done:
            on_done(rec)

    def failed(rec: UpscaleRecord, path: Path, e: Exception, start: float) -> None:
        rec.status = "failed"
        rec.error = str(e) if isinstance(e, SanaSRError) else f"{path}: {_one_line(e)}"
        finish(rec, start)

    def flush() -> None:
        if not pending:
            return
        batch = list(pending)
        pending.clear()
        try:
            _restore_and_write(model, batch, options, ledger, on_tile)
        except (SanaSRError, RuntimeError, ValueError, OSError) as e:
            for it in batch:
                if it.rec.status == "pending":
                    it.rec.status = "failed"
                    it.rec.error = it.rec.error or f"{it.path}: {e if isinstance(e, SanaSRError) else _one_line(e)}"
        for it in batch:
            finish(it.rec, it.start)

    # stage 1: headers only -> output paths (guarded, see plan_outputs); finished outputs are skipped (resume),
    # and only a file this tool wrote there (the ledger says so) is ever replaced without --overwrite
    ledger = OutputLedger(outdir)
    todo: list[tuple[UpscaleRecord, Path, Path]] = []
    for plan in plan_outputs(images, input_root, outdir, options):
        path = plan.input
        rec = UpscaleRecord(input=str(path), process=process_index)
        records.append(rec)
        start = time.perf_counter()
        rec.input_size = plan.size
        rec.output = str(plan.output) if plan.output is not None else None
        try:
            if plan.error:
                raise ImageReadError(plan.error)
            out = plan.output
            remove_stale_temps(out)  # left by a killed run (ours carry TEMP_MARK); the output is judged below
            expected = output_size(*plan.size, options.scale)
            if out.exists() or out.is_symlink():
                if not options.overwrite and not ledger.owns(out):
                    raise ImageReadError(
                        f"{path}: {out} already exists and was not written by sanasr: it is left as it is "
                        "(move it, or pass --overwrite to replace it)"
                    )
                if not (options.overwrite or options.redo) and is_complete_image(out, expected):
                    rec.status, rec.output_size = "skipped", expected
                    finish(rec, start)
                    continue
            if options.save_prompts:
                txt = out.with_suffix(".txt")
                if (txt.exists() or txt.is_symlink()) and not options.overwrite and not ledger.owns(txt):
                    raise ImageReadError(
                        f"{path}: {txt} already exists and was not written by sanasr (--save-prompts would "
                        "replace it; move it, or pass --overwrite)"
                    )
        except (SanaSRError, RuntimeError, ValueError, OSError) as e:
            failed(rec, path, e, start)
            continue
        todo.append((rec, path, out))

    # stage 2: tag the files to do in one pass (fills the tag cache, then frees the tagger's GPU memory), build
    # their prompts and encode them all, then move the text encoder off the accelerator (see prompts_first)
    tagger = options.tagger or tagger_from_rule(options.prompt_rule, device=model.device)
    prompted = prompts_for_files(tagger, [path for _, path, _ in todo], options)

    # stages 3-5: read, restore (batched by size when untiled), write
    with prompts_first(model, [p for _, p in prompted.values()], options.keep_text_encoder):
        for rec, path, out in todo:
            start = time.perf_counter()
            try:
                lq, info = read_image(path, options.max_pixels)
                rec.mode = info.mode + (f" {info.bit_depth}-bit" if info.bit_depth != 8 else "")
                if info.frames > 1:
                    rec.note = f"{info.frames} frames (animated): the first frame was upscaled"
                if path in prompted:
                    tags, rec.prompt = prompted[path]
                else:  # not tagged in stage 2 (e.g. the tagger failed there): tagged here, as before
                    tags = clean_tags(tagger.tags(lq, path), limit=options.prompt_rule.tag_limit)
                    rec.prompt = build_prompt(tags, options.prompt_rule.template, options.user_prompt)
            except (SanaSRError, RuntimeError, ValueError, OSError) as e:
                failed(rec, path, e, start)
                continue
            item = _Item(rec, path, out, lq, info, tags, start)
            if pending and (pending[0].lq.shape != lq.shape or len(pending) >= options.batch_size):
                flush()
            pending.append(item)
            plan = plan_tiles(model, lq.shape[-2] * MODEL_SCALE, lq.shape[-1] * MODEL_SCALE, options.tile)
            if options.batch_size <= 1 or plan.dit_tile is not None or plan.vae_tile is not None:
                flush()
        flush()
    return records


def prompts_for_files(tagger: Tagger, paths: list[Path], options: UpscaleOptions) -> dict[Path, tuple[list[str], str]]:
    """Tag `paths` in one pass (`tag_files`: fills the tag cache, then releases the tagger), and return the
    (clean tags, prompt) of each file whose tags are then known: from that pass, or from a tagger that needs
    no image (none, file). A file missing here (unreadable, or the tagger failed on it) is tagged, or reported,
    in `upscale_files`' restoring loop."""
    tagged = tag_files(tagger, paths)
    out: dict[Path, tuple[list[str], str]] = {}
    rule = options.prompt_rule
    for path in paths:
        try:
            raw = tagged[str(path)] if str(path) in tagged else None
            if raw is None and tagger.identity is None:
                raw = tagger.tags(None, path)
        except (SanaSRError, RuntimeError, ValueError, OSError):
            raw = None  # met again, and reported, in the restoring loop
        if raw is not None:
            tags = clean_tags(raw, limit=rule.tag_limit)
            out[path] = (tags, build_prompt(tags, rule.template, options.user_prompt))
    return out


def _restore_and_write(
    model: SanaSR, batch: list[_Item], options: UpscaleOptions, ledger: OutputLedger | None = None, on_tile=None
) -> None:
    """Stages 3-5 for images of one size; on an OOM the tiles shrink (a batch of several first splits up)."""
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    h, w = batch[0].lq.shape[-2:]
    plan = plan_tiles(model, h * MODEL_SCALE, w * MODEL_SCALE, options.tile)
    lq = torch.stack([it.lq for it in batch])
    prompts = [it.rec.prompt for it in batch]
    if len(batch) > 1:
        try:
            sr = restore_x4(model, lq, prompts, plan, options.color_fix, options.batch_size)
        except Exception as e:
            from sanasr_cli.models.tiling import is_oom

            if not is_oom(e):
                raise
            for it in batch:  # one at a time, with the usual tile fallback
                _restore_and_write(model, [it], options, ledger, on_tile)
            return
    else:
        tiles = None if on_tile is None or plan.dit_tiles <= 1 else partial(on_tile, batch[0].path)
        with count_tiles(model.restorer, plan.dit_tiles, tiles):
            sr, plan = run_with_oom_retry(
                lambda p: restore_x4(model, lq, prompts, p, options.color_fix, options.batch_size), plan
            )
    # asked again at the moment of writing (the check in upscale_files came before minutes of work): a file that
    # appeared at an output path meanwhile is the user's, and is replaced only with --overwrite
    may_replace = None if options.overwrite or ledger is None else ledger.owns
    for i, it in enumerate(batch):
        ow, oh = output_size(w, h, options.scale)
        out = resize_to(sr[i : i + 1], oh, ow)[0].cpu()
        alpha = None
        if it.info.alpha is not None:
            alpha = resize_to(upsample_bicubic(it.info.alpha[None], MODEL_SCALE), oh, ow)[0]
        try:
            write_image(
                it.out,
                out,
                bit_depth=it.info.bit_depth,
                grayscale=it.info.grayscale,
                alpha=alpha,
                icc_profile=it.info.icc_profile,
                quality=options.quality,
                before_replace=ledger.recorder(it.out) if ledger else None,
                may_replace=may_replace,
            )
            if options.save_prompts:
                txt = it.out.with_suffix(".txt")
                data = (", ".join(it.tags) + "\n").encode("utf-8")
                atomic_write(txt, data, TEMP_MARK, ledger.recorder(txt) if ledger else None, may_replace=may_replace)
        except OSError as e:
            it.rec.status, it.rec.error = "failed", f"{it.path}: cannot write ({e.strerror or e})"
            continue
        except UnsafeOutputError as e:  # a file that appeared at the output path during the run, or an input
            it.rec.status, it.rec.error = "failed", f"{it.path}: {e}"
            continue
        except SanaSRError as e:
            it.rec.status, it.rec.error = "failed", str(e)
            continue
        it.rec.status, it.rec.output_size, it.rec.tile_plan = "ok", (ow, oh), plan.to_dict()


# ---------------------------------------------------------------- work split and report


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'i/n' (0 <= i < n) -> (i, n); None -> (0, 1). ValueError with the flag named otherwise."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(p) for p in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n with 0 <= i < n (e.g. 0/4), not '{spec}'") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard takes i/n with 0 <= i < n (e.g. 0/4), not '{spec}'")
    return i, n


def split_work(files: list[Path], shard: tuple[int, int] = (0, 1), process: tuple[int, int] = (0, 1)) -> list[Path]:
    """This shard's and this process's share of a sorted file list: every file in exactly one share."""
    si, sn = shard
    pi, pn = process
    mine = files[si::sn]
    return mine[pi::pn]


def write_report(path: Path, records: list[dict], meta: dict) -> None:
    """run.json: {"meta": ..., "summary": counts, "records": [one per input]}; atomic."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    doc = {"meta": meta, "summary": {"inputs": len(records), **counts}, "records": records}
    atomic_write(path, json.dumps(doc, indent=2, default=str) + "\n")
