"""Upscaling images and folders with a loaded SanaSR.

Per image: read -> bicubic to scale x size (the model's input, x_L at target resolution) -> prompt (tagger +
template) -> one-step restore -> write `<stem>.png`. A file that fails is recorded with a one-line error and the
run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sanasr_cli.data.io import read_image, write_image
from sanasr_cli.data.resample import upsample_bicubic  # noqa: F401  (re-exported: its old home)
from sanasr_cli.errors import SanaSRError
from sanasr_cli.models.sanasr import SanaSR
from sanasr_cli.prompts.rule import PromptRule, prompt_for_image, tag_files, tagger_from_rule
from sanasr_cli.prompts.taggers import Tagger


@dataclass
class UpscaleOptions:
    scale: float = 4.0
    prompt_rule: PromptRule = field(default_factory=PromptRule)
    user_prompt: str | None = None
    tagger: Tagger | None = None  # built from prompt_rule (with the tag cache) when None


@dataclass
class UpscaleRecord:
    """One input's outcome (also a row of the run report)."""

    input: str
    output: str | None = None
    status: str = "pending"  # ok | failed
    error: str | None = None
    input_size: tuple[int, int] | None = None  # (width, height)
    output_size: tuple[int, int] | None = None
    prompt: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def upscale_tensor(model: SanaSR, lq: torch.Tensor, prompt: str, scale: float) -> torch.Tensor:
    """(3, h, w) LQ in [0, 1] -> (3, round(h*scale), round(w*scale)) SR in [0, 1], on the CPU."""
    x = upsample_bicubic(lq, scale)
    return model.restore(x[None], [prompt])[0].cpu()


def output_path_for(image: Path, input_root: Path, outdir: Path) -> Path:
    """OUTDIR/<stem>.png, keeping sub-folders relative to the input folder."""
    rel = image.relative_to(input_root) if input_root.is_dir() else Path(image.name)
    return outdir / rel.with_suffix(".png")


def upscale_files(
    model: SanaSR,
    images: Iterable[Path],
    input_root: Path,
    outdir: Path,
    options: UpscaleOptions,
    on_done: Callable[[UpscaleRecord], None] | None = None,
) -> list[UpscaleRecord]:
    images = list(images)
    tagger = options.tagger or tagger_from_rule(options.prompt_rule, device=model.device)
    tag_files(tagger, images)  # tag every file first, then free the GPU from the tagger; the loop hits the cache
    records = []
    for path in images:
        rec = UpscaleRecord(input=str(path))
        start = time.perf_counter()
        try:
            lq, info = read_image(path)
            rec.input_size = (info.width, info.height)
            rec.prompt = prompt_for_image(options.prompt_rule, lq, path, tagger, options.user_prompt)
            sr = upscale_tensor(model, lq, rec.prompt, options.scale)
            out = output_path_for(path, input_root, outdir)
            write_image(out, sr)
            rec.output, rec.output_size, rec.status = str(out), (sr.shape[-1], sr.shape[-2]), "ok"
        except SanaSRError as e:
            rec.status, rec.error = "failed", str(e)
        except (RuntimeError, ValueError) as e:  # e.g. out of memory; the run goes on with the next file
            rec.status, rec.error = "failed", f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        rec.seconds = round(time.perf_counter() - start, 4)
        records.append(rec)
        if on_done:
            on_done(rec)
    return records
