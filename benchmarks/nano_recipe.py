"""Build `nano`, a small SANA-SR, from real photos on a CPU: one command, one seed, resumable stages.

    python benchmarks/nano_recipe.py --work runs/nano            # all stages, then ship into the package
    python benchmarks/nano_recipe.py --work runs/nano --stage prior   # one stage (the ones before must exist)

Stages (each writes a folder under --work; a finished stage is skipped on rerun, an interrupted one resumes from
its last checkpoint):
  1. data         photos that ship inside scikit-image, scikit-learn and matplotlib, split by file into train
                  and held-out before anything is trained (manifest.json: package, path, SHA-256, split);
                  --train-photos DIR adds a folder of training photos (the package ones teach little: see
                  sanasr_cli/models/nano/findings.md)
  2. autoencoder  the nano DC-AE (diffusers AutoencoderDC, f4c16) trained as an autoencoder on HQ crops with a
                  pixel loss (L1 + MSE; no pretrained perceptual network is available offline); its
                  scaling_factor is set to 1 / std of its latents, as SANA's DC-AE config carries one
  3. text         a 2-layer Gemma-2 (random, frozen, from the seed) and the local word-level tokenizer, saved as
                  diffusers-layout text_encoder/ and tokenizer/, and the flow-matching scheduler config (shift 3)
  4. prior        the nano LinearDiT (diffusers SanaTransformer2DModel) pretrained by flow matching on nano
                  latents of HQ crops: u ~ logit-normal(0, 1), sigma = s u / (1 + (s - 1) u) with s = 3, the
                  transformer fed 1000 * sigma (SANA's convention), target eps - z0; conditioned through the real
                  prompt path (the quality template alone, encoded with SANA's complex human instruction)
  5. sr           `sanasr train` with the paper's objective on Real-ESRGAN-degraded crops (lambda_p = 0: no LPIPS
                  weights offline), then `sanasr merge-lora --ema`
  6. ship         base/ and sr/ copied into sanasr_cli/models/nano/, with the manifest and each stage's report
Held-out photos are never read by stages 2-5; the evaluation (benchmarks/nano_quality.py) is the only reader.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sanasr_cli.models.presets import NANO_DIR, PRESETS, build_local_tokenizer  # noqa: E402

PRESET = PRESETS["nano"]

# nano v1's photos (package, path, split) and where the Python packages keep them: one list, in the v2 recipe
from recipes.nano.data import PHOTOS, package_data_dir  # noqa: E402, F401


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- 1. data


def stage_data(work: Path, train_photos: Path | None = None) -> list[dict]:
    """The package photos, split as PHOTOS says, as PNG under work/photos/{train,heldout}/, and manifest.json.

    train_photos: a folder of more training photos (recursively; e.g. DIV2K on a machine that has it), added to the
    train split as local-NNNNN-STEM.png. A file byte-identical to a held-out photo is refused: held-out photos are
    never trained on (a re-encoded copy cannot be caught by its SHA-256: keep such sets apart by hand)."""
    from PIL import Image

    out = work / "photos"
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
    write_json(work / "manifest.json", manifest)
    log(
        f"data: {sum(m['split'] == 'train' for m in manifest)} train, "
        f"{sum(m['split'] == 'heldout' for m in manifest)} held-out photos"
    )
    return manifest


def load_split(work: Path, split: str) -> list[torch.Tensor]:
    """(3, H, W) uint8 tensors of one split."""
    from PIL import Image

    return [
        torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1)
        for p in sorted((work / "photos" / split).glob("*.png"))
    ]


def random_crops(images: list[torch.Tensor], crop: int, n: int, g: torch.Generator) -> torch.Tensor:
    """n random crops (with random flips) from the images, float in [0, 1], (n, 3, crop, crop): distill's sampler."""
    from sanasr_cli.training.distill import random_crops as sample

    return sample(images, crop, n, g)


# ---------------------------------------------------------------- training helper (resumable loop)


def train_loop(name, work, module, steps, lr, step_fn, seed, save_every=100, warmup=50, clip=1.0):
    """AdamW with warmup + cosine decay (to lr / 10); gradient clipping at `clip` (0: none); a checkpoint (weights,
    optimizer, step, RNG) every save_every steps."""
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
            log(
                f"{name}: step {step + 1}/{steps} loss {recent:.5f} ({(time.time() - t0) / (step + 1 - start):.2f} s/step)"
            )
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


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a.clamp(0, 1), b)))


# ---------------------------------------------------------------- 2. autoencoder


def stage_autoencoder(work: Path, seed: int, steps: int, batch: int = 8, crop: int = 32, lr: float = 2e-3) -> dict:
    from diffusers import AutoencoderDC

    from sanasr_cli.models.vae import LatentCodec

    torch.manual_seed(seed)
    vae = AutoencoderDC(**PRESET.vae)
    train = load_split(work, "train")

    def step_fn(g):
        x = random_crops(train, crop, batch, g) * 2 - 1
        y = vae.decode(vae.encode(x).latent).sample
        return F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x)

    start = time.time()
    # small crops, many steps, a high rate without clipping: measured fastest to a good reconstruction on 1 core
    history = train_loop("autoencoder", work, vae, steps, lr, step_fn, seed, save_every=500, clip=0)
    with torch.no_grad():  # scaling factor: 1 / std of the latents of train crops
        g = torch.Generator().manual_seed(seed + 1)
        z = torch.cat([vae.encode(random_crops(train, 128, 8, g) * 2 - 1).latent for _ in range(8)])
        scaling = float(1 / z.std())
    vae.register_to_config(scaling_factor=round(scaling, 5))
    vae.save_pretrained(str(work / "base" / "vae"), safe_serialization=True)
    report = dict(
        steps=steps,
        batch=batch,
        crop=crop,
        loss="mse + 0.5 l1 on [-1, 1] pixels",
        lr=lr,
        seconds=round(time.time() - start, 1),
        final_loss=sum(history[-50:]) / 50,
        scaling_factor=round(scaling, 5),
        latent_mean=float(z.mean()),
        latent_std=float(z.std()),
    )
    # reconstruction PSNR on the held-out photos (measured only; never trained on)
    codec = LatentCodec(vae)
    with torch.no_grad():
        recon = {}
        for p in sorted((work / "photos" / "heldout").glob("*.png")):
            x = load_image(p)
            recon[p.stem] = round(psnr(codec.crop(codec.decode(codec.encode_padded(x)), *x.shape[-2:]), x), 2)
    report["heldout_reconstruction_psnr"] = recon
    log(f"autoencoder: {report}")
    return report


def load_image(path: Path) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255


# ---------------------------------------------------------------- 3. text encoder, tokenizer, scheduler


def stage_text(work: Path, seed: int) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = build_local_tokenizer()
    cfg = dict(PRESET.text_encoder, vocab_size=len(tokenizer))
    cfg.update(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    torch.manual_seed(seed + 2)
    model = Gemma2Model(Gemma2Config(**cfg))
    base = work / "base"
    model.save_pretrained(str(base / "text_encoder"), safe_serialization=True)
    tokenizer.save_pretrained(str(base / "tokenizer"))
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=PRESET.flow_shift).save_pretrained(
        str(base / "scheduler")
    )
    return dict(vocab=len(tokenizer), params=sum(p.numel() for p in model.parameters()))


def prompt_encoder(work: Path):
    from transformers import AutoModel, AutoTokenizer

    from sanasr_cli.models.text_encoder import PromptEncoder

    base = work / "base"
    return PromptEncoder(
        AutoTokenizer.from_pretrained(str(base / "tokenizer")),
        AutoModel.from_pretrained(str(base / "text_encoder")),
        max_length=PRESET.max_text_length,
    )


# ---------------------------------------------------------------- 4. prior


def stage_prior(work: Path, seed: int, steps: int, batch: int = 32, crop: int = 64, pool: int = 1536) -> dict:
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel

    from sanasr_cli.models.schedule import flow_sigma
    from sanasr_cli.models.vae import LatentCodec
    from sanasr_cli.prompts.template import DEFAULT_TEMPLATE, build_prompt

    start = time.time()
    codec = LatentCodec(AutoencoderDC.from_pretrained(str(work / "base" / "vae")))
    train = load_split(work, "train")
    pool_file = work / "ckpt" / "prior_latents.pt"
    if pool_file.exists():
        latents = torch.load(pool_file, weights_only=True)
    else:  # a fixed pool of encoded crops (flips included): the encoder runs once, not every step
        g = torch.Generator().manual_seed(seed + 3)
        with torch.no_grad():
            latents = torch.cat([codec.encode(random_crops(train, crop, 32, g)) for _ in range(pool // 32)])
        pool_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(latents, pool_file)
    prompts = prompt_encoder(work)
    embeds, mask = prompts.encode([build_prompt([], DEFAULT_TEMPLATE)])
    torch.manual_seed(seed + 4)
    transformer = SanaTransformer2DModel(**PRESET.transformer)
    shift = PRESET.flow_shift

    def step_fn(g):
        idx = torch.randint(len(latents), (batch,), generator=g)
        z0 = latents[idx]
        u = torch.sigmoid(torch.randn(batch, generator=g))  # logit-normal(0, 1)
        sigma = flow_sigma(u * 1000, shift)
        eps = torch.randn(z0.shape, generator=g)
        zt = (1 - sigma.view(-1, 1, 1, 1)) * z0 + sigma.view(-1, 1, 1, 1) * eps
        v = transformer(
            hidden_states=zt,
            encoder_hidden_states=embeds.expand(batch, -1, -1),
            encoder_attention_mask=mask.expand(batch, -1),
            timestep=1000 * sigma,
            return_dict=False,
        )[0]
        return F.mse_loss(v, eps - z0)

    history = train_loop("prior", work, transformer, steps, 3e-4, step_fn, seed)
    transformer.save_pretrained(str(work / "base" / "transformer"), safe_serialization=True)
    # sanity: 20 Euler steps with diffusers' own scheduler from noise; latent statistics vs the data's
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(20)
    g = torch.Generator().manual_seed(seed + 5)
    z = torch.randn(4, *latents.shape[1:], generator=g)
    with torch.no_grad():
        for t in sched.timesteps:
            v = transformer(
                hidden_states=z,
                encoder_hidden_states=embeds.expand(4, -1, -1),
                encoder_attention_mask=mask.expand(4, -1),
                timestep=t.expand(4),
                return_dict=False,
            )[0]
            z = sched.step(v, t, z).prev_sample
        sample = codec.decode(z)
    from PIL import Image

    grid = (sample.permute(0, 2, 3, 1).reshape(-1, sample.shape[-1], 3).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(grid).save(work / "prior_samples.png")
    report = dict(
        steps=steps,
        batch=batch,
        crop=crop,
        latent_pool=len(latents),
        lr=3e-4,
        t_sampling="logit-normal(0, 1)",
        shift=shift,
        seconds=round(time.time() - start, 1),
        final_loss=sum(history[-50:]) / 50,
        first_loss=sum(history[:50]) / 50,
        data_latents=dict(mean=float(latents.mean()), std=float(latents.std())),
        sampled_latents=dict(mean=float(z.mean()), std=float(z.std())),
        params=sum(p.numel() for p in transformer.parameters()),
    )
    log(f"prior: {report}")
    return report


# ---------------------------------------------------------------- 5. SR adaptation (sanasr train + merge-lora)

SR_ARGS = dict(crop=64, batch=4, lora_rank=32, lr=5e-4, ema=0.99)


def write_prior_dir(prior_dir: Path, base_source: str) -> Path:
    """The nano base as a model directory that `sanasr train --model` adapts: sanasr.json pointing at the base
    (no adapter: the prior's transformer)."""
    from sanasr_cli.models.sanasr import describe_preset

    prior_dir.mkdir(parents=True, exist_ok=True)
    desc = describe_preset("nano")
    desc.base_source = base_source
    desc.save(prior_dir)
    return prior_dir


def sr_train_command(
    prior_dir: Path,
    hq: Path,
    run: Path,
    steps: int,
    seed: int,
    lr: float = SR_ARGS["lr"],
    tau_g: float | None = None,
    save_every: int = 250,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The `sanasr train` command of the SR stage (SR_ARGS, the paper's objective with lambda_p = 0); `extra`
    flags come last (the ablations change one thing each)."""
    cmd = [
        sys.executable,
        "-m",
        "sanasr_cli",
        "train",
        "--model",
        str(prior_dir),
        "--hq",
        str(hq),
        "-o",
        str(run),
        "--crop",
        str(SR_ARGS["crop"]),
        "--batch-size",
        str(SR_ARGS["batch"]),
        "--max-steps",
        str(steps),
        "--save-every",
        str(save_every),
        "--validate-every",
        str(steps),
        "--validation-images",
        "2",
        "--log-every",
        "25",
        "--lora-rank",
        str(SR_ARGS["lora_rank"]),
        "--lora-alpha",
        str(SR_ARGS["lora_rank"]),
        "--lora-targets",
        "attn+ffn",
        "--lr",
        str(lr),
        "--lr-warmup-steps",
        "50",
        "--ema-decay",
        str(SR_ARGS["ema"]),
        "--lambda-perceptual",
        "0",
        "--precision",
        "fp32",
        "--num-workers",
        "1",
        "--seed",
        str(seed),
        "--protocol",
        "hq",
        "--tag-cache",
        "off",
    ]
    if tau_g is not None:
        cmd += ["--tau-g", str(tau_g)]
    return cmd + list(extra)


def stage_sr(
    work: Path, seed: int, steps: int, threads: int, lr: float = SR_ARGS["lr"], tau_g: float | None = None
) -> dict:
    start = time.time()
    base = str((work / "base").resolve())
    prior_dir = write_prior_dir(work / "prior_model", base)
    run = work / "sr_run"
    # a model folder's local base is used only when the user names it (docs/model-folders.md): named here
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), SANASR_BASE=base)
    cmd = sr_train_command(prior_dir, work / "photos" / "train", run, steps, seed, lr, tau_g)
    last = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])) if run.exists() else []
    if last:
        cmd += ["--resume", "latest"]
    log("sr: " + " ".join(cmd))
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    final = run / f"checkpoint-{steps}"
    merged = work / "sr"
    if merged.exists():
        shutil.rmtree(merged)
    subprocess.run(
        [sys.executable, "-m", "sanasr_cli", "merge-lora", str(final), "-o", str(merged), "--ema"],
        check=True,
        env=env,
        cwd=REPO,
    )
    log_lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return dict(
        steps=steps,
        **dict(SR_ARGS, lr=lr),
        tau_g=tau_g or 900,
        lora_targets="attn+ffn",
        lambda_perceptual=0,
        protocol="hq",
        seconds=round(time.time() - start, 1),
        first_loss=log_lines[0]["loss"],
        final_loss=log_lines[-1]["loss"],
        command=" ".join(c for c in cmd[3:] if c not in ("--resume", "latest")),
    )


# ---------------------------------------------------------------- 6. ship


def stage_ship(work: Path, reports: dict) -> None:
    dest = NANO_DIR
    (dest / "base").mkdir(parents=True, exist_ok=True)
    for part in ("vae", "text_encoder", "tokenizer", "scheduler", "transformer"):
        if (dest / "base" / part).exists():
            shutil.rmtree(dest / "base" / part)
        shutil.copytree(work / "base" / part, dest / "base" / part)
    if (dest / "sr").exists():
        shutil.rmtree(dest / "sr")
    shutil.copytree(work / "sr", dest / "sr", ignore=shutil.ignore_patterns("*.tmp"))
    desc = json.loads((dest / "sr" / "sanasr.json").read_text())
    desc["base_source"] = "shipped:nano"  # the package's own base, wherever it is installed
    for record in desc.get("history", []):
        record.pop("source", None)  # absolute paths of this machine
    (dest / "sr" / "sanasr.json").write_text(json.dumps(desc, indent=2) + "\n")
    shutil.copy(work / "manifest.json", dest / "manifest.json")
    quality_file = REPO / "benchmarks" / "results" / "nano_quality.json"
    quality = json.loads(quality_file.read_text()) if quality_file.exists() else None
    if quality:  # the held-out measurement and the CI pairs' gain travel with the model
        reports = dict(reports, heldout=quality["median"], ci_pairs=quality.get("ci_pairs"))
    write_json(dest / "recipe_report.json", reports)
    (dest / "README.md").write_text(model_card(reports, quality))
    log(f"ship: {dest}")


def model_card(reports: dict, quality: dict | None) -> str:
    """models/nano/README.md from the stage reports and the held-out measurement."""
    ae, prior, sr = reports.get("autoencoder", {}), reports.get("prior", {}), reports.get("sr", {})
    manifest = json.loads((NANO_DIR / "manifest.json").read_text())
    rows = "\n".join(
        f"| {m['package']} | `{m['path']}` | {m['split']} | {m['size'][0]}x{m['size'][1]} | `{m['sha256'][:16]}...` |"
        for m in manifest
    )
    total = sum(float(r.get("seconds", 0)) for r in (ae, prior, sr))
    recon = ", ".join(f"{k} {v:.2f}" for k, v in ae.get("heldout_reconstruction_psnr", {}).items())
    quality_table = quality["markdown"] if quality else "(not measured yet)"
    findings_file = NANO_DIR / "findings.md"  # measured observations written by hand, kept with the card
    findings = findings_file.read_text() + "\n" if findings_file.exists() else ""
    progress = "".join(
        f"  - step {p['step']}: median gain over bicubic on the held-out photos {p['gain_psnr_y']:+.2f} dB Y-PSNR, "
        f"{p['gain_ssim']:+.4f} SSIM (the checkpoint's live adapter, no colour fix)\n"
        for p in (quality or {}).get("progress", [])
    )
    return f"""# nano: a small SANA-SR trained here on real photos

`--model nano` loads `sr/` (a SANA-SR model directory whose base is `base/`, a diffusers-layout folder like a
local copy of SANA). Same classes as the real model: `AutoencoderDC`, `SanaTransformer2DModel`, a Gemma-2 text
encoder, the flow-matching schedule with shift 3, SANA's timestep convention (the transformer is fed
1000 * sigma) and SANA's prompt encoding (complex human instruction prepended). It is a working, honest small
model and a regression check of the whole method (`tests/test_nano.py`), not a competitor to SANA-600M.

## Recipe

One command, one seed (0), on a 2-core x86-64 CPU, fp32, one intra-op thread per process (`--threads 1`; the
shipped SR run was resumed once, from its step-750 checkpoint, with 2 threads):

    python benchmarks/nano_recipe.py --work runs/nano --threads 1
    python benchmarks/nano_quality.py

| stage | what | settings | seconds |
| --- | --- | --- | --- |
| 1 data | {len(manifest)} photos from scikit-image, scikit-learn, matplotlib ({sum(m["split"] == "train" for m in manifest)} train, {sum(m["split"] == "heldout" for m in manifest)} held-out), split by file before training | table below | - |
| 2 autoencoder | nano DC-AE f4c32 (16/32/64 channels), pixel loss only: no pretrained perceptual network offline | {ae.get("steps")} steps, batch {ae.get("batch")}, {ae.get("crop")}px crops, AdamW {ae.get("lr")}, {ae.get("loss")} | {ae.get("seconds")} |
| 3 text | 2-layer Gemma-2 (width 64, random, frozen, seed 0) + local word-level tokenizer; scheduler (shift 3) | - | - |
| 4 prior | LinearDiT (6 blocks, width 128, patch 2) by flow matching on nano latents; {prior.get("t_sampling")} then shift 3; fed 1000 sigma; prompt: the quality template through the real prompt path | {prior.get("steps")} steps, batch {prior.get("batch")}, {prior.get("crop")}px crops ({prior.get("latent_pool")} encoded), AdamW {prior.get("lr")} | {prior.get("seconds")} |
| 5 SR | `sanasr train` (paper objective, lambda_p = 0 offline, HQ-prompt protocol tau_g 900) on Real-ESRGAN-degraded crops, LoRA rank {sr.get("lora_rank")} on attention + FFN; `sanasr merge-lora --ema` | {sr.get("steps")} steps, batch {sr.get("batch")}, {sr.get("crop")}px HQ crops, lr {sr.get("lr")}, EMA {sr.get("ema")} | {sr.get("seconds")} |

Total training time: {total / 60:.1f} minutes. The SR command was `sanasr {sr.get("command", "")}`.

## Each stage on the way

- Autoencoder: final training loss {ae.get("final_loss", float("nan")):.4f}; reconstruction PSNR (RGB, dB) of the
  held-out photos (measured only): {recon}. Latent scaling factor {ae.get("scaling_factor")} (1 / std).
- Prior: flow-matching loss {prior.get("first_loss", float("nan")):.4f} (first 50 steps) -> {prior.get("final_loss", float("nan")):.4f} (last 50). Latents sampled from noise
  with diffusers' FlowMatchEulerDiscreteScheduler (20 steps): mean {prior.get("sampled_latents", {}).get("mean", float("nan")):.3f}, std {prior.get("sampled_latents", {}).get("std", float("nan")):.3f};
  data latents: mean {prior.get("data_latents", {}).get("mean", float("nan")):.3f}, std {prior.get("data_latents", {}).get("std", float("nan")):.3f}.
- SR: training loss {sr.get("first_loss", float("nan")):.4f} (step 1) -> {sr.get("final_loss", float("nan")):.4f} (last logged step).
{progress}
{findings}## Held-out photos (never seen by any stage)

Degraded with the Real-ESRGAN pipeline (default settings, fixed seed per file), upscaled x4, 8-bit outputs,
Y-PSNR (dB) and SSIM by pyiqa as `sanasr eval` computes them (`benchmarks/nano_quality.py`):

{quality_table}
## Data manifest

| package | path | split | size | SHA-256 |
| --- | --- | --- | --- | --- |
{rows}

Full hashes: `manifest.json`. Stage reports: `recipe_report.json`.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/nano"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stage", default="all", choices=["all", "data", "autoencoder", "text", "prior", "sr", "ship"])
    ap.add_argument(
        "--train-photos",
        type=Path,
        default=None,
        help="a folder of more training photos (e.g. DIV2K), added to the package ones; use a new --work",
    )
    ap.add_argument("--ae-steps", type=int, default=3000)
    ap.add_argument("--prior-steps", type=int, default=400)
    ap.add_argument("--sr-steps", type=int, default=1000)
    ap.add_argument("--sr-lr", type=float, default=SR_ARGS["lr"])
    ap.add_argument("--sr-tau-g", type=float, default=None, help="generation timestep (default: the protocol's 900)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    reports_file = work / "reports.json"
    reports = json.loads(reports_file.read_text()) if reports_file.exists() else {}

    def run(stage, fn, done_marker):
        if args.stage not in ("all", stage):
            return
        if stage in reports and done_marker.exists():
            log(f"{stage}: done already ({done_marker})")
            return
        reports[stage] = fn()
        write_json(reports_file, reports)

    run("data", lambda: dict(photos=len(stage_data(work, args.train_photos))), work / "manifest.json")
    run("autoencoder", lambda: stage_autoencoder(work, args.seed, args.ae_steps), work / "base" / "vae")
    run("text", lambda: stage_text(work, args.seed), work / "base" / "text_encoder")
    run("prior", lambda: stage_prior(work, args.seed, args.prior_steps), work / "base" / "transformer")
    run("sr", lambda: stage_sr(work, args.seed, args.sr_steps, args.threads, args.sr_lr, args.sr_tau_g), work / "sr")
    if args.stage in ("all", "ship"):
        stage_ship(work, reports)


if __name__ == "__main__":
    main()
