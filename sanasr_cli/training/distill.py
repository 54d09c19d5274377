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

Like `train` (and with its helpers, training/distributed.py), one code path serves a CPU, one GPU and
`accelerate launch --multi_gpu --num_processes N -m sanasr_cli distill ...`: the student trains under DDP, each
process draws its crops from its own share of the HQ images with its own generator (process 0's is the
single-process one), the main process alone validates and writes checkpoints and OUT, and every checkpoint holds
each process's RNG state, so a resumed run continues as an uninterrupted one would.
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
from sanasr_cli.training.distributed import (
    check_replicas_in_sync,
    make_accelerator,
    raise_if_any_failed,
    release_accelerator_state,
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
    is_main: bool = True  # False on the other processes of an `accelerate launch` (they print nothing)


# ---------------------------------------------------------------- data


def hq_files(folders: list[str]) -> list[Path]:
    """Every image file under the folders (recursively), in a fixed order; DatasetError for a missing folder."""
    from sanasr_cli.data.io import list_images

    files = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise DatasetError(f"--hq {folder}: not a folder")
        files += list_images(root, recursive=True)
    return files


def decode_hq(
    files: list[Path], crop: int, limit: int | None = None
) -> tuple[list[torch.Tensor], list[str], list[str]]:
    """The usable files as (3, H, W) uint8 (at most `limit`), and the names of those left out: smaller than the
    crop, and unreadable (each of these with one DatasetWarning naming it, as `train`'s dataset does)."""
    import warnings

    from sanasr_cli.data.datasets import DatasetWarning
    from sanasr_cli.data.io import read_image
    from sanasr_cli.errors import ImageReadError

    images, small, unreadable = [], [], []
    for path in files:
        if limit is not None and len(images) >= limit:
            break
        try:
            x, _ = read_image(path)
        except ImageReadError as error:
            warnings.warn(DatasetWarning(f"skipped unreadable image {path}: {error}"), stacklevel=2)
            unreadable.append(path.name)
            continue
        if min(x.shape[-2:]) < crop:
            small.append(path.name)
            continue
        images.append((x.clamp(0, 1) * 255).round().to(torch.uint8))
    return images, small, unreadable


def no_usable_image(folders: list[str], crop: int, small: list[str], unreadable: list[str]) -> DatasetError:
    left_out = [f"{len(small)} smaller than --crop {crop}"] if small else []
    if unreadable:
        left_out.append(f"{len(unreadable)} unreadable image(s): {', '.join(unreadable[:3])}")
    what = f" ({'; '.join(left_out)})" if left_out else ""
    return DatasetError(f"--hq {' '.join(folders)}: no usable image found{what}")


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


def save_distill_checkpoint(
    run: Path, step: int, student, optimizer, rng_per_rank: list[dict], history: list, extra: dict
) -> Path:
    """RUN/checkpoint-<step>/{student/, train/optimizer.pt, train/rng.safetensors, train/state.json}; staged.
    Main process only; `rng_per_rank`: every process's `capture_rng` (gathered), stored as `train` stores them."""
    from safetensors.torch import save_file

    from sanasr_cli.safe_files import atomic_write, make_temp_dir, usual_file_modes
    from sanasr_cli.training.checkpoint import _rng_files

    final = run / f"checkpoint-{step}"
    tmp = make_temp_dir(run, f".checkpoint-{step}.")
    try:
        student.save_pretrained(str(tmp / "student"), safe_serialization=True)
        usual_file_modes(tmp / "student")
        (tmp / "train").mkdir()
        torch.save(optimizer.state_dict(), tmp / "train" / "optimizer.pt")
        tensors, rng_meta = _rng_files(rng_per_rank)
        save_file(tensors, str(tmp / "train" / "rng.safetensors"))
        state = {"step": step, "history": history, "rng": rng_meta, **extra}
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


def _rng_of_rank(tensors: dict, meta: dict, rank: int) -> dict:
    """This process's RNG state; a checkpoint written before distill ran under accelerate holds one, unprefixed."""
    from sanasr_cli.training.checkpoint import _rng_for_rank

    if not any(k.startswith("rank") for k in tensors):
        tensors, meta = {f"rank0.{k}": v for k, v in tensors.items()}, {"0": meta}
    return _rng_for_rank(tensors, meta, rank)


def load_distill_checkpoint(ckpt: Path, kind: str, generator, dtype, rank: int = 0) -> tuple:
    """(student, optimizer state, state) from a checkpoint, with this process's RNG states restored;
    CheckpointError naming what is wrong."""
    from safetensors.torch import load_file

    from sanasr_cli.models.students import load_student

    try:
        state = json.loads((ckpt / "train" / STATE).read_text())
        if state.get("kind") != kind:
            raise CheckpointError(f"{ckpt} is a checkpoint of a {state.get('kind')} student, not of a {kind}")
        student = load_student(kind, ckpt / "student", dtype)
        student.requires_grad_(True).train()
        optimizer_state = torch.load(ckpt / "train" / "optimizer.pt", weights_only=True)
        rng = _rng_of_rank(load_file(str(ckpt / "train" / "rng.safetensors")), state["rng"], rank)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {ckpt}: {e}" if str(ckpt) not in str(e) else str(e)) from None
    except Exception as e:  # noqa: BLE001 - truncated / altered files: one line
        raise CheckpointError(f"{ckpt}: cannot be resumed ({type(e).__name__}: {str(e).strip()[:200]})") from None
    restore_rng(rng, {"data": generator})
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


def create_distill_accelerator(device: str):
    """The run's Accelerator (training/distributed.py, as `train`'s), fp32: cpu forces the CPU (gloo between
    processes); auto / cuda: accelerate's device (under `accelerate launch`, each process its own GPU); cuda:N:
    that GPU, one process only."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise DistillConfigError(f"--device takes auto, cpu, cuda or cuda:N, not {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DistillConfigError(f"--device {device}: no CUDA GPU is available")
        if ":" in device:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise DistillConfigError(
                    f"--device {device} names one GPU; under accelerate launch each process takes its own: "
                    "use --device cuda"
                )
            torch.cuda.set_device(torch.device(device))
    return make_accelerator("no", cpu=device == "cpu")


def _data_generator(config: DistillConfig, rank: int) -> torch.Generator:
    """The crops and degradations of one process: process 0 draws as a single-process run does."""
    return torch.Generator().manual_seed(config.seed + 1_000_003 * rank)


def _shard(files: list, accelerator) -> list:
    """Each process its own image files (every num_processes-th, from its rank)."""
    n = accelerator.num_processes
    if len(files) < n:
        raise DatasetError(f"--hq: {len(files)} image file(s) for {n} processes; each needs at least one")
    return files[accelerator.process_index :: n]


def _load_shard(config: DistillConfig, accelerator) -> tuple[list[torch.Tensor], int]:
    """This process's HQ images, decoded by it alone (memory per process: its share of the folder, not all of it),
    and the number of usable images over all processes. Every process learns the counts before any raises, so
    that a shard with nothing usable stops all processes with the same line instead of leaving them waiting."""
    n = accelerator.num_processes
    shard, small, unreadable = decode_hq(_shard(hq_files(config.hq), accelerator), config.crop)
    counts = [len(shard)] if n == 1 else accelerator.gather(torch.tensor([len(shard)], device=accelerator.device))
    total = int(sum(int(c) for c in counts))
    if total == 0:
        raise no_usable_image(config.hq, config.crop, small, unreadable)
    if min(int(c) for c in counts) == 0:
        raise DatasetError(f"--hq: {total} usable image(s) for {n} processes; each needs at least one")
    return shard, total


def _first_usable(config: DistillConfig) -> list[torch.Tensor]:
    import warnings

    with warnings.catch_warnings():  # each unreadable file was named once already, by the process that owns it
        warnings.simplefilter("ignore")
        return decode_hq(hq_files(config.hq), config.crop, limit=VALIDATION_CROPS)[0]


def distill(
    config: DistillConfig,
    on_step: Callable[[int, int, float], None] | None = None,
    on_message: Callable[[str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> DistillResult:
    """Run stages 1-4 (see the module docstring); resumes from the newest checkpoint of the run folder.

    One code path for a CPU, one GPU and `accelerate launch` (DDP: each process its own shard of the HQ images
    and its own crop / degradation generator; the student's gradients averaged; the main process alone writes
    checkpoints, validation grids and OUT). The hooks (start (first step, steps), step, message) are called on
    the main process only."""
    config.check()
    out = Path(config.output)
    if out.exists() and not config.overwrite:
        raise DistillConfigError(f"{out} already exists (pass --overwrite to replace it)")
    ckpt = find_resume(config)  # a bad --resume is refused before any work
    accelerator = create_distill_accelerator(config.device)
    main = accelerator.is_main_process
    say = (on_message or (lambda _m: None)) if main else (lambda _m: None)
    try:
        return _distill(config, accelerator, ckpt, say, on_step if main else None, on_start if main else None)
    finally:
        accelerator.wait_for_everyone()
        accelerator.end_training()
        release_accelerator_state()


def _distill(config: DistillConfig, accelerator, ckpt, say, on_step, on_start) -> DistillResult:
    from sanasr_cli.data.degradation import RealESRGANDegrader
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.models.students import build_student, student_config

    device, main, rank = accelerator.device, accelerator.is_main_process, accelerator.process_index
    # 1. model, teacher, data (this process's shard; validation crops from all images, main process)
    model = load_model(config.model, device=device, base=config.base)
    if config.crop % model.codec.factor:
        raise DistillConfigError(f"--crop must be a multiple of the VAE factor {model.codec.factor}, not {config.crop}")
    shard, total = _load_shard(config, accelerator)
    teacher = Teacher(model, config.kind)
    degrader = RealESRGANDegrader()
    g = _data_generator(config, rank)
    val_hq = val_lq = None
    if main:
        # the first usable images of the whole folder, whatever the number of processes
        first = shard if accelerator.num_processes == 1 else _first_usable(config)
        val_hq = centre_crops(first, config.crop, VALIDATION_CROPS).to(device)
        val_lq = degrader(val_hq, torch.Generator().manual_seed(config.seed + 1))
    # 2. student: fresh or resumed
    run = config.run
    if main:
        run.mkdir(parents=True, exist_ok=True)
        clean_staging(run)
    accelerator.wait_for_everyone()
    vae_cfg = model.codec.vae.config
    cfg = student_config(config.kind, vae_cfg, model.description.base_preset, config.student)
    student = build_student(config.kind, cfg, seed=config.seed)
    start, history, resumed, opt_state = 0, [], None, None
    if ckpt is not None:
        student, opt_state, state = load_distill_checkpoint(ckpt, config.kind, g, torch.float32, rank)
        start, history, resumed = int(state["step"]), list(state["history"]), int(state["step"])
        say(f"resumed from {ckpt} (step {start})")
        if state.get("num_processes", 1) != accelerator.num_processes:
            say(
                f"note: {ckpt} was written by {state.get('num_processes', 1)} process(es), this run has "
                f"{accelerator.num_processes}: crops differ from an uninterrupted run"
            )
    student.to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    params = sum(p.numel() for p in student.parameters())
    say(
        f"{config.kind} student: {params / 1e6:.3f} M parameters; {total} HQ images "
        f"({len(shard)} on each of {accelerator.num_processes} process(es)); run folder {run}"
    )
    ddp, optimizer = accelerator.prepare(student, optimizer)
    # 3. train
    if on_start:
        on_start(start, config.steps)
    t0 = time.perf_counter()
    val_psnr = None
    extra = {"kind": config.kind, "model": str(config.model), "config": cfg,
             "num_processes": accelerator.num_processes}  # fmt: skip
    for step in range(start, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        hq = random_crops(shard, config.crop, config.batch_size, g).to(device)
        lq = degrader(hq, g)
        x, target = teacher.inputs_and_targets(hq, lq)
        loss = F.mse_loss(student_forward(ddp, config.kind, x), target)
        mean = accelerator.reduce(loss.detach(), reduction="mean")  # every process sees the same value
        if not torch.isfinite(mean):
            raise SanaSRError(f"distill: the loss is {mean.item()} at step {step + 1} (lower --lr)")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(ddp.parameters(), 1.0)
        optimizer.step()
        history.append(round(float(mean), 7))
        if on_step:
            on_step(step + 1, config.steps, history[-1])
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            psnr = _save(run, step + 1, student, optimizer, g, history, extra, accelerator, teacher, val_hq, val_lq)
            if not main:
                continue
            val_psnr = psnr
            say(
                f"step {step + 1}: loss {sum(history[-50:]) / len(history[-50:]):.6f}, student vs teacher "
                f"{val_psnr:.2f} dB on {len(val_hq)} validation crops; checkpoint saved"
            )
    if main and val_psnr is None:  # nothing left to train (resumed at the end)
        val_psnr = validate(student, teacher, config.kind, val_hq, val_lq, None)
    seconds = time.perf_counter() - t0
    # 4. OUT: MODEL + the student (main process)
    _write_output(config, model, student, history, val_psnr, params, accelerator)
    return DistillResult(
        output=Path(config.output),
        steps=config.steps,
        first_loss=history[0] if history else None,
        final_loss=history[-1] if history else None,
        validation_psnr=val_psnr,
        seconds=seconds,
        resumed_from=resumed,
        is_main=main,
    )


def _save(run, step, student, optimizer, g, history, extra, accelerator, teacher, val_hq, val_lq) -> float | None:
    """Every process contributes its RNG state; the main process validates and writes the checkpoint; a failed
    save is raised on every process."""
    from accelerate.utils import gather_object

    check_replicas_in_sync(student, accelerator, select=lambda _n: True, what="student weights")
    rng = gather_object([capture_rng({"data": g})])
    psnr, error = None, None
    if accelerator.is_main_process:
        try:
            psnr = validate(student, teacher, extra["kind"], val_hq, val_lq, run / f"validation-{step}.png")
            extra["validation_psnr"] = round(psnr, 3)
            save_distill_checkpoint(run, step, student, optimizer, rng, history, extra)
        except OSError as e:
            error = f"could not write checkpoint-{step} in {run} ({e.strerror or e}); earlier checkpoints are untouched"
    raise_if_any_failed(error)
    return psnr


def _write_output(config: DistillConfig, model, student, history, val_psnr, params, accelerator) -> None:
    from sanasr_cli.models.sanasr import save_model_dir

    error = None
    if accelerator.is_main_process:
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
            num_processes=accelerator.num_processes,
        )  # fmt: skip
        desc.distill = {**(desc.distill or {}), config.kind: record}
        desc.history.append({"command": f"distill {config.kind}", "steps": config.steps})
        try:
            save_model_dir(model, Path(config.output), desc, save_transformer=desc.transformer != "base",
                           overwrite=config.overwrite)  # fmt: skip
            (config.run / "distill_config.json").write_text(json.dumps(asdict(config), indent=2, default=str) + "\n")
        except (OSError, SanaSRError) as e:
            error = str(e)
    raise_if_any_failed(error)
