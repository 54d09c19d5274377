"""Making LQ/HQ benchmark pairs from HQ photos with the training degradation pipeline (`sanasr degrade`).

Per image: read -> crop (centre crop of `crop` px, or the largest multiple of the scale from the top-left
corner) -> RealESRGANDegrader with a generator seeded from (seed, file stem) -> write OUT/hq/<stem>.png and
OUT/lq/<stem>.png. The seed of a file does not depend on the other files, so one file re-run alone gives the
same bytes. A file that fails is recorded with a one-line error and the run goes on.

Files already at an output path are replaced only when sanasr wrote them (OUT/.sanasr-outputs.jsonl records
each file it writes: safe_files.OutputLedger, as `upscale` does) or with `overwrite`; any other file fails that
input with its name and stays as it is.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sanasr_cli.data.degradation import RealESRGANDegrader
from sanasr_cli.data.io import read_image, write_image
from sanasr_cli.errors import SanaSRError
from sanasr_cli.safe_files import OutputLedger, atomic_write, check_confined


@dataclass
class DegradeRecord:
    input: str
    hq: str | None = None
    lq: str | None = None
    status: str = "pending"  # ok | failed
    error: str | None = None
    hq_size: tuple[int, int] | None = None  # (width, height)
    plan: dict | None = None  # the drawn degradation parameters (kernels left out)
    seconds: float | None = None


def file_seed(seed: int, stem: str) -> int:
    """A 63-bit seed from the run seed and the file stem (stable across runs, platforms and file order)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stem}".encode()).digest()[:8], "little") >> 1


def crop_for_scale(image: torch.Tensor, scale: int, crop: int | None) -> torch.Tensor:
    """(3, H, W) -> centre `crop` x `crop` (a multiple of scale), or, with crop=None, the top-left
    (H - H % scale) x (W - W % scale). Raises SanaSRError when the image is too small."""
    h, w = image.shape[-2:]
    if crop is None:
        hh, ww = h - h % scale, w - w % scale
        if hh == 0 or ww == 0:
            raise SanaSRError(f"{w}x{h} is smaller than the scale {scale}")
        return image[:, :hh, :ww]
    if h < crop or w < crop:
        raise SanaSRError(f"{w}x{h} is smaller than the {crop}px crop (use --no-crop or a smaller --crop)")
    top, left = (h - crop) // 2, (w - crop) // 2
    return image[:, top : top + crop, left : left + crop]


def plan_summary(plan: dict) -> dict:
    """The plan without kernel tensors, JSON-ready."""
    out = {}
    for key, value in plan.items():
        if isinstance(value, dict):
            value = {k: (list(v) if isinstance(v, tuple) else v) for k, v in value.items() if k != "kernel"}
        out[key] = value
    return out


def degrade_files(
    images: Iterable[Path],
    outdir: Path,
    degrader: RealESRGANDegrader,
    seed: int = 0,
    crop: int | None = None,
    device: torch.device | str = "cpu",
    on_done: Callable[[DegradeRecord], None] | None = None,
    overwrite: bool = False,
) -> list[DegradeRecord]:
    """overwrite: also replace files at the output paths that sanasr did not write (default: that input fails)."""
    records, stems = [], {}
    ledger = OutputLedger(outdir)
    for path in images:
        rec = DegradeRecord(input=str(path))
        start = time.perf_counter()
        try:
            if path.stem in stems:
                raise SanaSRError(f"{path}: stem '{path.stem}' already used by {stems[path.stem].name}")
            stems[path.stem] = path
            hq_out, lq_out = outdir / "hq" / f"{path.stem}.png", outdir / "lq" / f"{path.stem}.png"
            for out in (hq_out, lq_out):
                check_confined(out, outdir)  # a link at an output path may not lead out of OUT
                check_not_foreign(out, ledger, overwrite, path)
            image, _ = read_image(path)
            try:
                hq = crop_for_scale(image, degrader.scale, crop)
            except SanaSRError as e:
                raise SanaSRError(f"{path}: {e}") from None
            g = torch.Generator(device=device).manual_seed(file_seed(seed, path.stem))
            lq, plans = degrader.degrade(hq[None].to(device), g)
            may_replace = None if overwrite else ledger.owns  # asked again at the moment of writing
            write_image(hq_out, hq, before_replace=ledger.recorder(hq_out), may_replace=may_replace)
            write_image(lq_out, lq[0].cpu(), before_replace=ledger.recorder(lq_out), may_replace=may_replace)
            rec.hq, rec.lq, rec.hq_size = str(hq_out), str(lq_out), (hq.shape[-1], hq.shape[-2])
            rec.plan, rec.status = plan_summary(plans[0]), "ok"
        except SanaSRError as e:
            rec.status, rec.error = "failed", str(e)
        except (RuntimeError, ValueError) as e:  # e.g. out of memory; the run goes on with the next file
            first = str(e).splitlines()[0] if str(e) else ""
            rec.status, rec.error = "failed", f"{path}: {type(e).__name__}: {first}"
        rec.seconds = round(time.perf_counter() - start, 4)
        records.append(rec)
        if on_done:
            on_done(rec)
    return records


def check_not_foreign(out: Path, ledger: OutputLedger, overwrite: bool, source: Path | None = None) -> None:
    """SanaSRError unless `out` is absent, was written by sanasr (the ledger says so), or overwrite is on."""
    if (out.exists() or out.is_symlink()) and not overwrite and not ledger.owns(out):
        raise SanaSRError(
            f"{str(source) + ': ' if source else ''}{out} already exists and was not written by sanasr: it is left "
            "as it is (move it, or pass --overwrite to replace it)"
        )


def write_manifest(
    path: Path,
    degrader: RealESRGANDegrader,
    seed: int,
    crop: int | None,
    records: list[DegradeRecord],
    overwrite: bool = False,
) -> None:
    """OUT/degradation.json: the configuration, seed and per-file plans. Written atomically, recorded in the
    folder's ledger (the caller checks beforehand that a file already there is sanasr's; the ledger is asked again
    as it is written, so one made during the run is not replaced without `overwrite`: UnsafeOutputError)."""
    body = {
        "scale": degrader.scale,
        "seed": seed,
        "crop": crop,
        "config": degrader.config.to_dict(),
        "files": [_manifest_row(r, path.parent) for r in records],
    }
    data = json.dumps(body, indent=1, default=_jsonable).encode("utf-8")
    ledger = OutputLedger(path.parent)
    atomic_write(path, data, before_replace=ledger.recorder(path), may_replace=None if overwrite else ledger.owns)


def _manifest_row(rec: DegradeRecord, outdir: Path) -> dict:
    row = {k: v for k, v in asdict(rec).items() if k != "seconds"}  # no timings: reruns give the same bytes
    for key in ("hq", "lq"):  # relative to OUT, so a moved or copied set stays self-describing
        if row[key]:
            row[key] = Path(row[key]).relative_to(outdir).as_posix()
    return row


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
