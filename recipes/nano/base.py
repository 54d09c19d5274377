"""What nano's base stages share (autoencoder.py, text.py, prior.py): their photos, the resumable training loop,
the stage reports, and shipping the base.

nano's base (sanasr_cli/models/nano/base: the DC-AE, the Gemma-2 text encoder and its tokenizer, the scheduler
config, the prior transformer) is nano v1's; nano v2's SR stage adapts it as shipped. The base stages read only
nano v1's photos (PHOTOS in data.py, 12 train and 4 held-out, stored at full size), never v2's pool, so that they
rebuild that base: WORK/v1/photos/{train,heldout}/STEM.png and WORK/v1/manifest.json (package, path, SHA-256,
split, size). Held-out photos are only measured (the autoencoder's reconstruction PSNR), never trained on.

Each stage writes its report into WORK/base_report.json; a stage whose report and output folder are there is
skipped on rerun, an interrupted one resumes from its checkpoint (WORK/ckpt/{autoencoder,prior}.pt).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from recipes.nano.data import PHOTOS, load_split, package_data_dir

# the base stages, run by name (`python -m recipes.nano --stage prior`); `all` adapts the shipped base
BASE_STAGES = ("autoencoder", "text", "prior", "ship-base")
BASE_PARTS = ("vae", "text_encoder", "tokenizer", "scheduler", "transformer")
REPORT = "base_report.json"


def v1_root(work: Path) -> Path:
    """The folder of nano v1's photos and manifest inside a work folder."""
    return work / "v1"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, data, indent: int = 2) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- the photos


def v1_photos(work: Path, train_photos: Path | None = None, log=print) -> list[dict]:
    """The package photos, split as PHOTOS says, as PNG under WORK/v1/photos/{train,heldout}/, and
    WORK/v1/manifest.json.

    train_photos: a folder of more training photos (recursively; e.g. DIV2K on a machine that has it), added to the
    train split as local-NNNNN-STEM.png. A file byte-identical to a held-out photo is refused: held-out photos are
    never trained on (a re-encoded copy cannot be caught by its SHA-256: keep such sets apart by hand)."""
    from PIL import Image

    out = v1_root(work) / "photos"
    manifest = []

    def add(src: Path, package: str, rel: str, split: str, name: str, digest: str) -> None:
        dst = out / split / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():  # written whole or not at all: an interrupted stage never leaves half a PNG to reuse
            tmp = dst.with_name(dst.name + ".tmp")
            Image.open(src).convert("RGB").save(tmp, format="PNG")
            os.replace(tmp, dst)
        w, h = Image.open(dst).size
        manifest.append(
            dict(package=package, path=rel, sha256=digest, split=split, file=f"{split}/{name}", size=[w, h])
        )

    for package, rel, split in PHOTOS:
        src = package_data_dir(package) / rel
        add(src, package, rel, split, Path(rel).stem + ".png", sha256(src))
    if train_photos is not None:
        from PIL import UnidentifiedImageError

        from sanasr_cli.data.io import list_images

        heldout = {m["sha256"]: m["path"] for m in manifest if m["split"] == "heldout"}
        files = list_images(train_photos, recursive=True)
        if not files:
            raise SystemExit(f"--train-photos {train_photos}: no image found")
        for i, src in enumerate(files):
            digest = sha256(src)
            if digest in heldout:
                raise SystemExit(f"--train-photos: {src} is the held-out photo {heldout[digest]}")
            try:
                add(src, "local", str(src.relative_to(train_photos)), "train", f"local-{i:05d}-{src.stem}.png", digest)
            except (OSError, UnidentifiedImageError) as e:  # a broken file stops the stage by name, not a traceback
                raise SystemExit(f"--train-photos: {src} cannot be read ({e}); remove it and rerun") from None
    write_json(v1_root(work) / "manifest.json", manifest)
    log(
        f"data: {sum(m['split'] == 'train' for m in manifest)} train, "
        f"{sum(m['split'] == 'heldout' for m in manifest)} held-out photos"
    )
    return manifest


def photo_tensors(work: Path, split: str) -> list:
    """(3, H, W) uint8 tensors of one split of WORK/v1/photos, in file-name order."""
    import torch

    return [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in load_split(v1_root(work), split)]


# ---------------------------------------------------------------- training helper (resumable loop)


def train_loop(name, work, module, steps, lr, step_fn, seed, save_every=100, warmup=50, clip=1.0, log=print):
    """AdamW with warmup + cosine decay (to lr / 10); gradient clipping at `clip` (0: none); a checkpoint (weights,
    optimizer, step, RNG) every save_every steps.

    The schedule is `sanasr distill`'s (training/distill.py), written as nano v1 computed it: the two round the
    cosine's argument differently (a last-bit difference in the rate), and this one rebuilds the shipped base."""
    import torch

    ckpt = work / "ckpt" / f"{name}.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    start, history = 0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["rng"])
        start, history = int(state["step"]), json.loads(state["history"])
        log(f"{name}: resumed at step {start}")

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))

    module.train()
    t0 = time.time()
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = step_fn(g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        opt.step()
        history.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            recent = sum(history[-100:]) / 100
            log(f"{name}: step {step + 1}/{steps} loss {recent:.5f} "
                f"({(time.time() - t0) / (step + 1 - start):.2f} s/step)")  # fmt: skip
        if (step + 1) % save_every == 0 or step + 1 == steps:
            state = dict(
                model=module.state_dict(),
                optimizer=opt.state_dict(),
                rng=g.get_state(),
                step=torch.tensor(step + 1),
                history=json.dumps(history),
            )
            torch.save(state, str(ckpt) + ".tmp")
            os.replace(str(ckpt) + ".tmp", ckpt)
    module.eval()
    return history


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
