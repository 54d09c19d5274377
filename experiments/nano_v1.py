"""nano v1 end to end in one work folder, for experiments: its photos, its base (the recipe's own base stages), and
its SR stage (`sanasr train` on the photos themselves, Real-ESRGAN-degraded online, then `sanasr merge-lora
--ema`). The ablations (nano_ablations.py) retrain from this SR stage's command.

    python experiments/nano_v1.py --work runs/nano                    # data, autoencoder, text, prior, sr
    python experiments/nano_v1.py --work runs/nano --stage prior      # one stage (the ones before must exist)
    python experiments/nano_v1.py --work runs/nano_div2k --train-photos DIR   # more training photos

Stages (a finished stage is skipped on rerun, an interrupted one resumes from its last checkpoint):
  data         nano v1's photos (recipes/nano/base.py: WORK/v1/photos, WORK/v1/manifest.json); --train-photos DIR
               adds a folder of training photos (the package ones teach little: sanasr_cli/models/nano/findings.md)
  autoencoder, text, prior
               `python -m recipes.nano --stage autoencoder|text|prior`'s code (recipes/nano/): WORK/base
  sr           `sanasr train` with the paper's objective (lambda_p = 0: no LPIPS weights offline) from WORK/base,
               SR_ARGS, then `sanasr merge-lora --ema` into WORK/sr
Nothing here writes into the package: nano v2's recipe (`python -m recipes.nano`) builds and ships nano's SR
stage, and its `ship-base` stage ships a base built here. Held-out photos are never read by the training stages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recipes.nano.base import run_base_stage, run_stage, v1_photos, v1_root  # noqa: E402

SR_ARGS = dict(crop=64, batch=4, lora_rank=32, lr=5e-4, ema=0.99)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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
        sys.executable, "-m", "sanasr_cli", "train", "--model", str(prior_dir), "--hq", str(hq), "-o", str(run),
        "--crop", str(SR_ARGS["crop"]), "--batch-size", str(SR_ARGS["batch"]), "--max-steps", str(steps),
        "--save-every", str(save_every), "--validate-every", str(steps), "--validation-images", "2",
        "--log-every", "25", "--lora-rank", str(SR_ARGS["lora_rank"]), "--lora-alpha", str(SR_ARGS["lora_rank"]),
        "--lora-targets", "attn+ffn", "--lr", str(lr), "--lr-warmup-steps", "50", "--ema-decay", str(SR_ARGS["ema"]),
        "--lambda-perceptual", "0", "--precision", "fp32", "--num-workers", "1", "--seed", str(seed),
        "--protocol", "hq", "--tag-cache", "off",
    ]  # fmt: skip
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
    cmd = sr_train_command(prior_dir, v1_root(work) / "photos" / "train", run, steps, seed, lr, tau_g)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/nano"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stage", default="all", choices=["all", "data", "autoencoder", "text", "prior", "sr"])
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
    import torch

    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    todo = lambda stage: args.stage in ("all", stage)  # noqa: E731
    if todo("data"):
        photos = lambda: dict(photos=len(v1_photos(work, args.train_photos, log=log)))  # noqa: E731
        run_stage(work, "data", photos, v1_root(work) / "manifest.json", log)
    for stage in ("autoencoder", "text", "prior"):
        if todo(stage):
            run_base_stage(work, stage, args.ae_steps, args.prior_steps, args.seed, log=log)
    if todo("sr"):
        sr = lambda: stage_sr(work, args.seed, args.sr_steps, args.threads, args.sr_lr, args.sr_tau_g)  # noqa: E731
        run_stage(work, "sr", sr, work / "sr", log)


if __name__ == "__main__":
    main()
