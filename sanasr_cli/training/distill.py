"""`sanasr distill`: students of the frozen DC-AE, trained against it, saved into a model directory.

    distill(DistillConfig(kind="encoder", model="nano", hq=["photos/train"], output="nano_enc"))

Stages:
  1. load MODEL (its transformer, its VAE = the teacher, any student it already carries) and the HQ photos
  2. build the student (models/students.py, the base preset's default config) or resume it from the newest
     RUN/checkpoint-<step> (RUN = OUT + ".run" unless given)
  3. train: each step takes random HQ crops (random flips), degrades them with the Real-ESRGAN pipeline (the LQ
     distribution the restorer sees) and
       encoder: predicts z_L = E(bicubic_x4(x_L)) (scaled latents) from x_L; loss: MSE on the latent. (Only the
                latent: the restorer and the decoder read nothing else, and the latent MSE is what bounds their
                input error.)
       decoder: reproduces the teacher's image D(z) for both kinds of latent it meets: z = E(x_H) for half the
                batch, z = z_hat (the model's one restoration step from the model's own z_L) for the other half;
                loss: image MSE on [0, 1] pixels. LPIPS is not added: its VGG weights cannot be had offline.
     AdamW, linear warm-up then cosine decay to lr / 10; a checkpoint every `save_every` steps (the student as a
     diffusers folder, optimizer, RNG, step, losses; written to a staging folder and renamed into place) with a
     validation grid (teacher | student | 4x |difference| on fixed centre crops) and the student's PSNR
     against the teacher on them
  4. OUT: a model directory = MODEL + the student (`sanasr.json` records it under `encoder` / `decoder`)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sanasr_cli.errors import DatasetError, SanaSRError
from sanasr_cli.training.checkpoint import (
    CheckpointError,
    capture_rng,
    clean_staging,
    list_checkpoints,
    restore_rng,
)

KINDS = ("encoder", "decoder")
STATE = "state.json"
KEEP_CHECKPOINTS = 2
VALIDATION_CROPS = 4


class DistillConfigError(SanaSRError):
    """A distill setting that cannot work (bad input: exit 2)."""


@dataclass
class DistillConfig:
    kind: str  # encoder | decoder
    model: str  # preset or model directory (the teacher VAE is its base's)
    hq: list[str]
    output: str
    run_dir: str | None = None  # checkpoints (default: OUT + ".run")
    steps: int = 2000
    batch_size: int = 8
    crop: int = 64  # HQ crop side (pixels); a multiple of the VAE factor
    lr: float = 1e-3
    warmup: int = 50
    seed: int = 0
    save_every: int = 250
    resume: str = "auto"  # auto (newest checkpoint of RUN if any) | none | a checkpoint folder
    base: str | None = None
    device: str = "cpu"
    overwrite: bool = False
    student: dict = field(default_factory=dict)  # config overrides of the student

    def check(self) -> None:
        if self.kind not in KINDS:
            raise DistillConfigError(f"distill takes encoder or decoder, not {self.kind!r}")
        for name in ("steps", "batch_size", "crop", "save_every"):
            if int(getattr(self, name)) < 1:
                raise DistillConfigError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DistillConfigError(f"--lr must be a finite number > 0, not {self.lr}")
        if self.kind == "decoder" and self.batch_size < 2:
            raise DistillConfigError("--batch-size must be at least 2 for the decoder (half z_H, half z_hat)")
        if not self.hq:
            raise DistillConfigError("--hq: give at least one folder of HQ images")

    @property
    def run(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(str(self.output).rstrip("/") + ".run")


@dataclass
class DistillResult:
    output: Path
    steps: int
    first_loss: float | None
    final_loss: float | None
    validation_psnr: float | None
    seconds: float
    resumed_from: int | None


# ---------------------------------------------------------------- data


def load_hq_images(folders: list[str], crop: int) -> list[torch.Tensor]:
    """Every image under the folders (recursively) as (3, H, W) uint8; those smaller than the crop are left out.
    DatasetError when a folder is missing or nothing usable is found."""
    from sanasr_cli.data.io import list_images, read_image

    images, small = [], []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise DatasetError(f"--hq {folder}: not a folder")
        for path in list_images(root, recursive=True):
            x, _ = read_image(path)
            if min(x.shape[-2:]) < crop:
                small.append(path.name)
                continue
            images.append((x.clamp(0, 1) * 255).round().to(torch.uint8))
    if not images:
        what = f" ({len(small)} smaller than --crop {crop})" if small else ""
        raise DatasetError(f"--hq {' '.join(folders)}: no usable image found{what}")
    return images


def random_crops(images: list[torch.Tensor], crop: int, n: int, g: torch.Generator) -> torch.Tensor:
    """n random crops (random horizontal flips) of the images, float (n, 3, crop, crop) in [0, 1]."""
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=g))]
        _, h, w = img.shape
        y = int(torch.randint(h - crop + 1, (1,), generator=g))
        x = int(torch.randint(w - crop + 1, (1,), generator=g))
        c = img[:, y : y + crop, x : x + crop]
        if float(torch.rand(1, generator=g)) < 0.5:
            c = c.flip(-1)
        out.append(c)
    return torch.stack(out).float() / 255


def centre_crops(images: list[torch.Tensor], crop: int, n: int) -> torch.Tensor:
    out = []
    for img in images[:n]:
        _, h, w = img.shape
        y, x = (h - crop) // 2, (w - crop) // 2
        out.append(img[:, y : y + crop, x : x + crop])
    return torch.stack(out).float() / 255


# ---------------------------------------------------------------- the teacher's targets


class Teacher:
    """What the student learns from: the model's frozen VAE (and, for the decoder, its one restoration step)."""

    def __init__(self, model, kind: str):
        from sanasr_cli.prompts.template import build_prompt

        self.model, self.kind, self.codec = model, kind, model.codec
        if kind == "decoder":
            prompt = build_prompt([], model.description.prompt.template)  # untagged: the quality template
            self.embeds, self.mask = model.prompts.encode_for_transformer([prompt])

    @torch.no_grad()
    def inputs_and_targets(self, hq: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student input, target): encoder (x_L, z_L); decoder (z, D(z)) with z = [E(x_H) ; z_hat]."""
        from sanasr_cli.data.resample import upsample_bicubic

        codec = self.codec
        if self.kind == "encoder":
            return lq, codec.encode(codec.pad(upsample_bicubic(lq, 4))).float()
        half = hq.shape[0] // 2
        z_h = codec.encode(hq[:half])
        z_l = codec.encode_lq(codec.pad_lq(lq[half:]))  # the model's own encoder: what the decoder will meet
        n = z_l.shape[0]
        z_hat = self.model.restorer(z_l, self.embeds.repeat(n, 1, 1), self.mask.repeat(n, 1))
        z = torch.cat([z_h.float(), z_hat.float()])
        return z, codec.teacher_decode(z)


def student_forward(student, kind: str, x: torch.Tensor) -> torch.Tensor:
    """The student's output in the target's units: scaled latents (encoder), [0, 1] pixels (decoder)."""
    out = student(x).float()
    return out if kind == "encoder" else (out + 1) / 2


# ---------------------------------------------------------------- checkpoints


def save_distill_checkpoint(run: Path, step: int, student, optimizer, generator, history: list, extra: dict) -> Path:
    """RUN/checkpoint-<step>/{student/, train/optimizer.pt, train/rng.safetensors, train/state.json}; staged."""
    from safetensors.torch import save_file

    from sanasr_cli.safe_files import atomic_write, make_temp_dir, usual_file_modes

    final = run / f"checkpoint-{step}"
    tmp = make_temp_dir(run, f".checkpoint-{step}.")
    try:
        student.save_pretrained(str(tmp / "student"), safe_serialization=True)
        usual_file_modes(tmp / "student")
        (tmp / "train").mkdir()
        torch.save(optimizer.state_dict(), tmp / "train" / "optimizer.pt")
        rng = capture_rng({"data": generator})
        save_file(rng["tensors"], str(tmp / "train" / "rng.safetensors"))
        state = {"step": step, "history": history, "rng": rng["meta"], **extra}
        atomic_write(tmp / "train" / STATE, json.dumps(state) + "\n")  # last: marks it complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(run)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_distill_checkpoint(ckpt: Path, kind: str, optimizer, generator, dtype) -> tuple:
    """(student, state) from a checkpoint; CheckpointError naming what is wrong."""
    from safetensors.torch import load_file

    from sanasr_cli.models.students import load_student

    try:
        state = json.loads((ckpt / "train" / STATE).read_text())
        if state.get("kind") != kind:
            raise CheckpointError(f"{ckpt} is a checkpoint of a {state.get('kind')} student, not of a {kind}")
        student = load_student(kind, ckpt / "student", dtype)
        student.requires_grad_(True).train()
        optimizer_state = torch.load(ckpt / "train" / "optimizer.pt", weights_only=True)
        tensors = load_file(str(ckpt / "train" / "rng.safetensors"))
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated / altered files: one line
        raise CheckpointError(f"{ckpt}: cannot be resumed ({type(e).__name__}: {str(e).strip()[:200]})") from None
    restore_rng({"tensors": tensors, "meta": state["rng"]}, {"data": generator})
    return student, optimizer_state, state


def find_resume(config: DistillConfig) -> Path | None:
    if config.resume == "none":
        return None
    if config.resume == "auto":
        found = list_checkpoints(config.run)
        return found[-1][1] if found else None
    path = Path(config.resume)
    if not (path / "train" / STATE).is_file():
        raise CheckpointError(f"--resume {config.resume}: not a distill checkpoint (no train/{STATE} in it)")
    return path


# ---------------------------------------------------------------- validation grid


@torch.no_grad()
def validate(student, teacher: Teacher, kind: str, hq: torch.Tensor, lq: torch.Tensor, path: Path | None) -> float:
    """PSNR (dB, RGB) of what the student makes the image against what the teacher makes it, on fixed crops;
    with `path`, a PNG grid: one row per crop, teacher | student | 4x |difference|."""
    codec = teacher.codec
    student.eval()
    x, target = teacher.inputs_and_targets(hq, lq)
    pred = student_forward(student, kind, x)
    if kind == "encoder":  # judged where it matters: through the teacher's decoder
        target, pred = codec.teacher_decode(target), codec.teacher_decode(pred)
    pred = pred.clamp(0, 1)
    student.train()
    mse = F.mse_loss(pred, target).item()
    if path is not None:
        from sanasr_cli.data.io import write_image

        rows = [torch.cat([t, p, ((p - t).abs() * 4).clamp(0, 1)], dim=-1) for t, p in zip(target, pred, strict=True)]
        write_image(path, torch.cat(rows, dim=-2))
    return 10 * math.log10(1 / max(mse, 1e-12))


# ---------------------------------------------------------------- the run


def _lr_at(step: int, config: DistillConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - config.warmup) / span))))


def distill(
    config: DistillConfig,
    on_step: Callable[[int, int, float], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> DistillResult:
    """Run stages 1-4 (see the module docstring); resumes from the newest checkpoint of the run folder."""
    from sanasr_cli.data.degradation import RealESRGANDegrader
    from sanasr_cli.models.sanasr import load_model, save_model_dir
    from sanasr_cli.models.students import build_student, student_config

    say = on_message or (lambda _m: None)
    config.check()
    device = torch.device(config.device)
    out = Path(config.output)
    if out.exists() and not config.overwrite:
        raise DistillConfigError(f"{out} already exists (pass --overwrite to replace it)")
    ckpt = find_resume(config)  # a bad --resume is refused before any work
    # 1. model, teacher, data
    model = load_model(config.model, device=device, base=config.base)
    if config.crop % model.codec.factor:
        raise DistillConfigError(f"--crop must be a multiple of the VAE factor {model.codec.factor}, not {config.crop}")
    images = load_hq_images(config.hq, config.crop)
    teacher = Teacher(model, config.kind)
    degrader = RealESRGANDegrader()
    g = torch.Generator().manual_seed(config.seed)
    val_hq = centre_crops(images, config.crop, VALIDATION_CROPS).to(device)
    val_lq = degrader(val_hq, torch.Generator().manual_seed(config.seed + 1))
    # 2. student: fresh or resumed
    run = config.run
    run.mkdir(parents=True, exist_ok=True)
    clean_staging(run)
    vae_cfg = model.codec.vae.config
    cfg = student_config(config.kind, vae_cfg, model.description.base_preset, config.student)
    student = build_student(config.kind, cfg, seed=config.seed).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
    start, history, resumed = 0, [], None
    if ckpt is not None:
        student, opt_state, state = load_distill_checkpoint(ckpt, config.kind, optimizer, g, torch.float32)
        student.to(device)
        optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
        optimizer.load_state_dict(opt_state)
        start, history, resumed = int(state["step"]), list(state["history"]), int(state["step"])
        say(f"resumed from {ckpt} (step {start})")
    student.train().requires_grad_(True)
    params = sum(p.numel() for p in student.parameters())
    say(f"{config.kind} student: {params / 1e6:.3f} M parameters; {len(images)} HQ images; run folder {run}")
    # 3. train
    t0 = time.perf_counter()
    val_psnr = None
    extra = {"kind": config.kind, "model": str(config.model), "config": cfg}
    for step in range(start, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        hq = random_crops(images, config.crop, config.batch_size, g).to(device)
        lq = degrader(hq, g)
        x, target = teacher.inputs_and_targets(hq, lq)
        loss = F.mse_loss(student_forward(student, config.kind, x), target)
        if not torch.isfinite(loss):
            raise SanaSRError(f"distill: the loss is {loss.item()} at step {step + 1} (lower --lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        history.append(round(float(loss.detach()), 7))
        if on_step:
            on_step(step + 1, config.steps, history[-1])
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            val_psnr = validate(student, teacher, config.kind, val_hq, val_lq, run / f"validation-{step + 1}.png")
            extra["validation_psnr"] = round(val_psnr, 3)
            save_distill_checkpoint(run, step + 1, student, optimizer, g, history, extra)
            say(f"step {step + 1}: loss {sum(history[-50:]) / len(history[-50:]):.6f}, student vs teacher "
                f"{val_psnr:.2f} dB on {len(val_hq)} validation crops; checkpoint saved")
    if val_psnr is None:  # nothing left to train (resumed at the end)
        val_psnr = validate(student, teacher, config.kind, val_hq, val_lq, None)
    seconds = time.perf_counter() - t0
    # 4. OUT: MODEL + the student
    student.eval().requires_grad_(False)
    if config.kind == "encoder":
        model.codec.lq_encoder = student
    else:
        model.codec.light_decoder = student
    desc = model.description
    record = dict(
        steps=config.steps, batch_size=config.batch_size, crop=config.crop, lr=config.lr, seed=config.seed,
        loss="latent MSE (scaled latents)" if config.kind == "encoder" else "image MSE, half z_H half z_hat",
        data=[str(p) for p in config.hq], degradation="Real-ESRGAN (sanasr degrade defaults)",
        first_loss=history[0] if history else None, final_loss=history[-1] if history else None,
        validation_psnr_vs_teacher=round(val_psnr, 3), params=params, from_model=str(config.model),
    )  # fmt: skip
    desc.distill = {**(desc.distill or {}), config.kind: record}
    desc.history.append({"command": f"distill {config.kind}", "steps": config.steps})
    save_model_dir(model, out, desc, save_transformer=desc.transformer != "base", overwrite=config.overwrite)
    (run / "distill_config.json").write_text(json.dumps(asdict(config), indent=2, default=str) + "\n")
    return DistillResult(
        output=out,
        steps=config.steps,
        first_loss=history[0] if history else None,
        final_loss=history[-1] if history else None,
        validation_psnr=val_psnr,
        seconds=seconds,
        resumed_from=resumed,
    )
