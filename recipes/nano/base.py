"""nano's base stages by name (autoencoder.py, text.py, prior.py): their dispatch, the stage reports, and shipping
the base. What the stages share lives beside it: nano v1's photos (v1_photos.py) and the resumable loop (loop.py).

nano's base (sanasr_cli/models/nano/base: the DC-AE, the Gemma-2 text encoder and its tokenizer, the scheduler
config, the prior transformer) is nano v1's; nano v2's SR stage adapts it as shipped. The base stages read only
nano v1's photos (PHOTOS in data.py, 12 train and 4 held-out, stored at full size), never v2's pool, so that they
rebuild that base: WORK/v1/photos/{train,heldout}/STEM.png and WORK/v1/manifest.json (package, path, SHA-256,
split, size). Held-out photos are only measured (the autoencoder's reconstruction PSNR), never trained on.

Each stage writes its report into WORK/base_report.json; a stage whose report and output folder are there is
skipped on rerun, an interrupted one resumes from its checkpoint (WORK/ckpt/{autoencoder,prior}.pt).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from recipes.nano.v1_photos import sha256, v1_photos, v1_root, write_json  # noqa: F401 - the base stages' API

# the base stages, run by name (`python -m recipes.nano --stage prior`); `all` adapts the shipped base
BASE_STAGES = ("autoencoder", "text", "prior", "ship-base")
BASE_PARTS = ("vae", "text_encoder", "tokenizer", "scheduler", "transformer")
REPORT = "base_report.json"


# ---------------------------------------------------------------- reports and stages


def read_reports(work: Path) -> dict:
    file = work / REPORT
    return json.loads(file.read_text()) if file.exists() else {}


def run_stage(work: Path, name: str, build: Callable[[], dict], done: Path, log=print) -> dict:
    """Run one stage unless its report and its output (`done`) are there; its report goes into base_report.json."""
    reports = read_reports(work)
    if name in reports and done.exists():
        log(f"{name}: done already ({done})")
        return reports[name]
    report = build()
    reports = dict(read_reports(work), **{name: report})
    write_json(work / REPORT, reports)
    return report


def ensure_photos(work: Path, log=print) -> None:
    """nano v1's photos, made once (the `data` entry of base_report.json)."""
    run_stage(work, "data", lambda: dict(photos=len(v1_photos(work, log=log))), v1_root(work) / "manifest.json", log)


def run_base_stage(work: Path, stage: str, ae_steps: int = 3000, prior_steps: int = 400, seed: int = 0, log=print):
    """One of BASE_STAGES (the entry command's dispatch)."""
    if stage == "ship-base":
        return ship_base(work, log=log)
    from recipes.nano import autoencoder, prior, text

    if stage != "text":
        ensure_photos(work, log)
    base = work / "base"
    stages = {
        "autoencoder": (lambda: autoencoder.stage_autoencoder(work, seed, ae_steps, log=log), base / "vae"),
        "text": (lambda: text.stage_text(work, seed), base / "text_encoder"),
        "prior": (lambda: prior.stage_prior(work, seed, prior_steps, log=log), base / "transformer"),
    }
    build, done = stages[stage]
    return run_stage(work, stage, build, done, log)


# ---------------------------------------------------------------- ship


def ship_base(work: Path, dest: Path | None = None, log=print) -> Path:
    """WORK/base's parts into the package's nano base (each part replaced whole), and their stage reports into
    recipe_report.json (its other entries kept). The shipped SR adapter was trained on the base it replaces: run
    the sr, ladder and ship stages again after this one."""
    from sanasr_cli.models.presets import NANO_DIR
    from sanasr_cli.safe_files import make_temp_dir, replace_dir

    dest = dest or NANO_DIR
    missing = [part for part in BASE_PARTS if not (work / "base" / part).is_dir()]
    if missing:
        raise SystemExit(f"ship-base: {work / 'base'} has no {', '.join(missing)}: run the autoencoder, text and "
                         "prior stages first")  # fmt: skip
    (dest / "base").mkdir(parents=True, exist_ok=True)
    for part in BASE_PARTS:
        tmp = make_temp_dir(dest / "base", f".{part}.")
        shutil.copytree(work / "base" / part, tmp / part)
        os.replace(tmp / part, tmp / "new")
        replace_dir(tmp / "new", dest / "base" / part)
        tmp.rmdir()
    report_file = dest / "recipe_report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    reports = read_reports(work)
    report.update({k: reports[k] for k in ("data", "autoencoder", "text", "prior") if k in reports})
    write_json(report_file, report, indent=1)  # as the ship stage writes it
    log(f"ship-base: {work / 'base'} -> {dest / 'base'}; the SR stage must run again on it")
    return dest / "base"
