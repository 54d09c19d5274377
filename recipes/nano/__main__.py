"""nano v2's recipe, one command; every stage resumable by rerunning the same command.

    python -m recipes.nano --work /data/nano_v2                    # every stage in order
    python -m recipes.nano --work /data/nano_v2 --stage ladder     # one stage (the ones before must have run)

Stages (a finished stage is skipped on rerun; an interrupted one resumes from its last file or checkpoint):
  data       photos from Debian's packages and the Python ones, split by file (recipes/nano/data.py)
  pairs      held-out evaluation pairs (EVAL_SEEDS draws per photo) and the training pool (--draws per photo),
             each a whole region degraded at once (recipes/nano/pairs.py)
  reference  the LQ-resolution reference learner on the pool, scored on the held-out pairs (reference.py)
  sr         `sanasr train --pairs` on the pool from nano's base as shipped (nano v1's autoencoder, text encoder
             and prior: the base stages below build them), SR_FLAGS; a checkpoint every 250 steps
  decoder    v1's decoder trained on, encoder frozen (latent space unchanged), on v2's photos and bicubic pool
             crops (recipes/nano/decoder.py) -> WORK/base_v2 (the shipped base with the v2 decoder)
  sr2        sr's checkpoint-SR2_FROM_STEP continued on WORK/base_v2 (`--base`: a change a resume may make)
  ladder     bicubic, D(E(bicubic)), D(E(HQ)), the reference learner, every nano checkpoint (EMA adapter), and with
             the v2 decoder its two autoencoder rungs and every sr2 checkpoint: the same pairs, pyiqa Y-PSNR / SSIM;
             WORK/ladder.json and WORK/ladder.md
  ship       `sanasr merge-lora --ema` of the chosen checkpoint (--ship-step, default the last) of sr2 (else sr)
             into the package (sanasr_cli/models/nano/sr; with sr2 also the v2 decoder into base/vae), the
             manifest, the ladder and the CI pairs (tests/data/nano_heldout)
Held-out photos are read only by `pairs` (to make the evaluation pairs) and by the scoring.

nano's base, by name only (`all` adapts the shipped base; recipes/nano/base.py), from nano v1's 16 photos:
  autoencoder  the DC-AE on HQ crops, pixel loss (autoencoder.py)       -> WORK/base/vae
  text         the random frozen Gemma-2, tokenizer, scheduler (text.py) -> WORK/base/{text_encoder,...}
  prior        the transformer by flow matching on its latents (prior.py) -> WORK/base/transformer
  ship-base    WORK/base into sanasr_cli/models/nano/base (then sr, ladder and ship again)
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

from recipes.nano.base import BASE_STAGES, run_base_stage

REPO = Path(__file__).resolve().parents[2]

# the SR stage: `sanasr train` flags (the ablation that chose them: WORK/ladder.json, the model card)
SR_FLAGS = [
    "--crop", "128", "--batch-size", "4", "--lora-rank", "32", "--lora-alpha", "32", "--lora-targets", "attn+ffn",
    "--lr", "5e-4", "--lr-warmup-steps", "50", "--ema-decay", "0.995", "--lambda-perceptual", "0",
    "--lambda-align", "0", "--lambda-consistency", "0", "--precision", "fp32", "--num-workers", "0", "--seed", "0",
    "--protocol", "hq", "--tag-cache", "off", "--save-every", "250", "--checkpoints-total-limit", "4",
    "--validate-every", "100000", "--validation-images", "0", "--log-every", "25",
]  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def stage_pairs(work: Path, draws: int) -> None:
    import numpy as np
    from PIL import Image

    from recipes.nano.pairs import EVAL_SEEDS, write_pairs

    def photos(split):
        files = sorted((work / "photos" / split).glob("*.png"))
        return [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in files]

    write_pairs(photos("heldout"), work / "eval_pairs", EVAL_SEEDS, seed=1)
    write_pairs(photos("train"), work / "train_pairs", draws, seed=0, progress=lambda i, n: log(f"pairs: {i}/{n}"))


def prior_dir(work: Path) -> Path:
    """nano's base as a model directory without an adapter: what `sanasr train --model` adapts."""
    from sanasr_cli.models.sanasr import describe_preset

    folder = work / "prior_model"
    if not (folder / "sanasr.json").exists():
        desc = describe_preset("nano")
        desc.base_source = "shipped:nano"
        desc.save(folder)
    return folder


def sr_command(work: Path, steps: int, run: str = "sr_run", base: Path | None = None) -> list[str]:
    """`sanasr train` of the SR stage into WORK/run; base: a base folder other than the shipped one (--base, a
    change a resumed run may make: the `sr2` stage continues `sr`'s checkpoint on the v2 decoder)."""
    pairs = work / "train_pairs"
    return [
        sys.executable, "-m", "sanasr_cli", "train", "--model", str(prior_dir(work)),
        "--pairs", str(pairs / "lq"), str(pairs / "hq"), "-o", str(work / run), "--max-steps", str(steps),
        *SR_FLAGS, "--resume", "auto", *(["--base", str(base)] if base else []),
    ]  # fmt: skip


# nano v3's SR runs (WORK/<name>), in the order the ladder lists them
V3_RUNS = ["v3_run", "v3_distill"]
# nano v2 as shipped (its merged SR transformer): nano v3's SR adapts it, read from the commit that shipped it
V2_COMMIT = "b6cac5d"
# the sr3 stage: `sanasr train` flags beyond SR_FLAGS' (which it shares but for the LoRA rank): the teacher's
# outputs as a second target beside the HQ
SR3_FLAGS = {
    "--teacher": "realesrgan-x4plus", "--lambda-teacher": "1.0", "--lora-rank": "64", "--lora-alpha": "64",
    "--checkpoints-total-limit": "1000",  # every checkpoint stays for the ladder (a few MB each)
}  # fmt: skip


def v2_model(work: Path) -> Path:
    """WORK/v2_model: nano v2's SR model directory (sanasr.json + merged transformer) as shipped at V2_COMMIT."""
    folder = work / "v2_model"
    if not (folder / "sanasr.json").exists():
        import io
        import tarfile

        tar = subprocess.run(
            ["git", "archive", V2_COMMIT, "sanasr_cli/models/nano/sr"], cwd=REPO, check=True, capture_output=True
        ).stdout
        tmp = work / "v2_model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            archive.extractall(tmp, filter="data")
        os.replace(tmp / "sanasr_cli" / "models" / "nano" / "sr", folder)
        shutil.rmtree(tmp)
    return folder


def sr3_command(work: Path, steps: int, pairs: Path, distill: bool = False) -> list[str]:
    """`sanasr train` of nano v3's SR stage: nano v2's SR model adapted on `pairs` with the teacher's outputs beside
    the HQ (WORK/v3_run); distill: the teacher's outputs of the LQ images alone, the HQ unused (WORK/v3_distill:
    a deterministic target, which MSE can match without averaging several plausible HQs into a blur)."""
    flags = list(SR_FLAGS)
    for flag, value in SR3_FLAGS.items():
        if flag in flags:
            flags[flags.index(flag) + 1] = value
        else:
            flags += [flag, value]
    if distill:
        flags = flags[: flags.index("--lambda-teacher")] + flags[flags.index("--lambda-teacher") + 2 :]
        data = ["--lq", str(pairs / "lq"), "-o", str(work / "v3_distill")]
    else:
        data = ["--pairs", str(pairs / "lq"), str(pairs / "hq"), "-o", str(work / "v3_run")]
    return [
        sys.executable, "-m", "sanasr_cli", "train", "--model", str(v2_model(work)), *data, "--max-steps", str(steps),
        *flags, "--teacher-cache", str(work / "teacher_cache"), "--resume", "auto",
    ]  # fmt: skip


# sr2 continues sr's checkpoint at this step (nano v2's first SR run, on v1's decoder) on the v2 decoder
SR2_FROM_STEP = 4500


def stage_sr2(work: Path, steps: int, threads: int) -> None:
    run = work / "sr2_run"
    start = work / "sr_run" / f"checkpoint-{SR2_FROM_STEP}"
    resume = REPO / "recipes" / "nano" / "resume"  # committed: a fresh machine resumes from the newest
    if not checkpoints(run):
        if checkpoints(resume / "sr2_run"):
            start = resume / "sr2_run" / f"checkpoint-{checkpoints(resume / 'sr2_run')[-1]}"
            run.mkdir(parents=True, exist_ok=True)
            shutil.copy2(resume / "sr2_run" / "log.jsonl", run / "log.jsonl")  # the seconds of the steps before
        elif not start.is_dir():
            start = resume / "sr_run" / start.name
        run.mkdir(parents=True, exist_ok=True)
        shutil.copytree(start, run / start.name)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(sr_command(work, steps, "sr2_run", work / "base_v2"), check=True, env=env, cwd=REPO)


def checkpoints(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if p.name.split("-")[1].isdigit())


class Ladder:
    """WORK/ladder.json: per-pair scores of each rung (cached: a rung is scored once) and their summaries."""

    def __init__(self, work: Path):
        from recipes.nano import ladder as L

        self.L, self.work, self.file = L, work, work / "ladder.json"
        self.stems, self.lq, self.hq = L.load_eval_pairs(work)
        self.data = json.loads(self.file.read_text()) if self.file.exists() else {"raw": {}, "rows": {}}
        self._scorer = None

    @property
    def scorer(self):
        self._scorer = self._scorer or self.L.Scorer()
        return self._scorer

    def rung(self, name: str, method=None, outputs=None) -> dict:
        if name not in self.data["raw"]:
            if outputs is not None:
                p, s = [], []
                for i in range(0, len(outputs), 16):
                    a, b = self.scorer(outputs[i : i + 16], self.hq[i : i + 16])
                    p, s = p + a, s + b
                self.data["raw"][name] = dict(psnr_y=p, ssim=s)
            else:
                self.data["raw"][name] = self.L.score_method(method, self.stems, self.lq, self.hq, self.scorer)
        if "bicubic" not in self.data["raw"]:
            self.data["raw"]["bicubic"] = self.L.score_method(self.L.bicubic_method, self.stems, self.lq, self.hq)
        self.data["rows"][name] = self.L.summary(self.data["raw"][name], self.data["raw"]["bicubic"], self.stems)
        write_json(self.file, dict(self.data, stems=self.stems))
        (self.work / "ladder.md").write_text(self.L.markdown(self.data["rows"]))
        row = self.data["rows"][name]
        log(f"ladder: {name}: median gain {row['median_gain_psnr_y']:+.3f} dB, mean {row['mean_gain_psnr_y']:+.3f} dB")
        return row


def stage_ladder(work: Path) -> None:
    import torch

    from recipes.nano import reference as R
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.prompts.template import DEFAULT_TEMPLATE, build_prompt

    ladder = Ladder(work)
    ladder.rung("bicubic", ladder.L.bicubic_method)
    base = load_model(prior_dir(work))
    methods, recon = ladder.L.autoencoder_methods(base.codec)
    ladder.rung("D(E(bicubic))", methods["autoencoder(bicubic)"])
    if "D(E(HQ))" not in ladder.data["raw"]:
        with torch.no_grad():
            outs = torch.cat([recon(ladder.hq[i : i + 8]) for i in range(0, len(ladder.hq), 8)])
        ladder.rung("D(E(HQ))", outputs=outs)
    ref = work / "ckpt" / "reference.pt"
    if ref.exists():
        model = R.ReferenceCNN()
        model.load_state_dict(torch.load(ref, weights_only=True)["model"])
        step = int(torch.load(ref, weights_only=True)["step"])
        ladder.rung(f"reference learner, step {step}", lambda a, b: model.eval()(a, b))
    prompt = build_prompt([], DEFAULT_TEMPLATE)
    for step in checkpoints(work / "sr_run"):
        ladder_checkpoint(ladder, work / "sr_run", step, f"nano SR, step {step} (EMA)", prompt)
    if (work / "base_v2" / "vae").is_dir():
        v2 = load_model(prior_dir(work), base=str(work / "base_v2"))
        methods, recon = ladder.L.autoencoder_methods(v2.codec)
        ladder.rung("D2(E(bicubic)) (v2 decoder)", methods["autoencoder(bicubic)"])
        if "D2(E(HQ)) (v2 decoder)" not in ladder.data["raw"]:
            with torch.no_grad():
                outs = torch.cat([recon(ladder.hq[i : i + 8]) for i in range(0, len(ladder.hq), 8)])
            ladder.rung("D2(E(HQ)) (v2 decoder)", outputs=outs)
        for step in checkpoints(work / "sr2_run"):
            name = f"nano SR on the v2 decoder, step {step} (EMA)"
            ladder_checkpoint(ladder, work / "sr2_run", step, name, prompt, base=work / "base_v2")


def ladder_checkpoint(ladder: Ladder, run: Path, step: int, name: str, prompt: str, base: Path | None = None):
    from sanasr_cli.models.merge import merge_model
    from sanasr_cli.models.sanasr import load_model

    if name in ladder.data["raw"]:
        return ladder.rung(name)
    model = load_model(run / f"checkpoint-{step}", base=str(base) if base else None)
    merge_model(model, ema=True)
    return ladder.rung(name, ladder.L.model_method(model, prompt))


def stage_ship(work: Path, step: int | None) -> None:
    """Ship the last SR run (sr2 on the v2 decoder once it has checkpoints, else sr): its EMA adapter merged into
    the package's sr/, and with sr2 the v2 decoder into the package's base/vae (the encoder is v1's, unchanged)."""
    from sanasr_cli.models.presets import NANO_DIR

    on_v2 = bool(checkpoints(work / "sr2_run"))
    run, base = (work / "sr2_run", work / "base_v2") if on_v2 else (work / "sr_run", None)
    step = step or checkpoints(run)[-1]
    merged = work / "sr"
    if merged.exists():
        shutil.rmtree(merged)
    env = dict(os.environ, SANASR_BASE=str(base)) if base else None  # the run's base: a folder named by the user
    merge = [sys.executable, "-m", "sanasr_cli", "merge-lora", str(run / f"checkpoint-{step}"), "-o", str(merged)]
    subprocess.run([*merge, "--ema"], check=True, cwd=REPO, env=env)
    if base:
        replace_tree(base / "vae", NANO_DIR / "base" / "vae")
    replace_tree(merged, NANO_DIR / "sr")
    desc = json.loads((NANO_DIR / "sr" / "sanasr.json").read_text())
    desc["base_source"] = "shipped:nano"  # the package's own base, wherever it is installed
    for record in desc.get("history", []):
        record.pop("source", None)  # absolute paths of this machine
        if "input" in record:
            record["input"] = record["input"].replace(str(work), "WORK")
    (NANO_DIR / "sr" / "sanasr.json").write_text(json.dumps(desc, indent=2) + "\n")
    manifest = json.loads((work / "manifest.json").read_text())
    write_json(NANO_DIR / "manifest.json", manifest)
    chosen = write_ci_pairs(work)
    report_file = NANO_DIR / "recipe_report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    v2 = report.setdefault("v2", {})
    command = "sanasr " + " ".join(sr_command(work, max_steps(run), run.name, base)[3:]).replace(str(work), "WORK")
    if on_v2:
        decoder = json.loads((base / "decoder_report.json").read_text())
        v2["decoder"] = dict(decoder, command="python -m recipes.nano --work WORK --stage decoder")
        v2["sr2"] = dict(from_step=SR2_FROM_STEP, step=step, command=command,
                         seconds=round(sr_seconds(run, step, start=SR2_FROM_STEP), 1))  # fmt: skip
    else:
        v2["sr"] = dict(step=step, command=command, seconds=round(sr_seconds(run, step), 1))
    v2["ci_pairs"] = dict(images=chosen, **ci_gains())
    if "images" in report.get("ci_pairs", {}):  # nano v1's CI crops and scores: its experiments were measured on them
        report["v1_ci_pairs"] = report["ci_pairs"]
    report["ci_pairs"] = dict(median_gain_none_psnr_y=v2["ci_pairs"]["median_gain_none_psnr_y"])
    write_json(report_file, report)
    log(f"ship: {run.name}/checkpoint-{step} (EMA) -> {NANO_DIR / 'sr'}; CI pairs {v2['ci_pairs']}")


def replace_tree(src: Path, dst: Path) -> None:
    """dst (a folder of the package this recipe writes) replaced by a copy of src."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.tmp"))


def max_steps(run: Path) -> int:
    return int(json.loads((run / "train_config.json").read_text())["max_steps"])


def sr_seconds(run: Path, step: int, start: int = 0) -> float:
    """Training seconds from `start` (where the run's log begins) to `step`: the sum of the logged step times (each
    log line's time x steps since the last)."""
    last, total = start, 0.0
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "step_time_s" in rec and rec["step"] <= step:
            total += rec["step_time_s"] * (rec["step"] - last)
            last = rec["step"]
    return total


def ci_gains() -> dict:
    """The shipped nano on the CI pairs, scored as tests/test_nano.py scores it (8-bit outputs, pyiqa Y-PSNR)."""
    import statistics

    import torch

    from sanasr_cli.data.io import read_image
    from sanasr_cli.data.resample import upsample_bicubic
    from sanasr_cli.evaluation.metrics import METRICS, build_metric
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pipeline.upscale import upscale_tensor
    from sanasr_cli.prompts.template import build_prompt

    model, psnr = load_model("nano"), build_metric(METRICS["psnr"])
    prompt = build_prompt([], model.description.prompt.template)
    gains: dict[str, list[float]] = {"none": [], "wavelet": []}
    for lq_path in sorted((CI_PAIRS / "lq").glob("*.png")):
        lq, hq = read_image(lq_path)[0], read_image(CI_PAIRS / "hq" / lq_path.name)[0][None]
        bicubic = float(psnr((upsample_bicubic(lq[None], 4).clamp(0, 1) * 255).round() / 255, hq))
        for fix in gains:
            with torch.no_grad():
                sr = (upscale_tensor(model, lq, prompt, color_fix=fix)[None] * 255).round() / 255
            gains[fix].append(round(float(psnr(sr, hq)) - bicubic, 3))
    return {
        "gain_none_psnr_y": gains["none"], "gain_wavelet_psnr_y": gains["wavelet"],
        "median_gain_none_psnr_y": round(statistics.median(gains["none"]), 3),
        "median_gain_wavelet_psnr_y": round(statistics.median(gains["wavelet"]), 3),
    }  # fmt: skip


CI_PAIRS = REPO / "tests" / "data" / "nano_heldout"


def write_ci_pairs(work: Path, count: int = 8) -> list[str]:
    """tests/data/nano_heldout: the seed-0 evaluation pair of `count` held-out photos, evenly spaced in name order
    (a rule, not a pick), for tests/test_nano.py."""
    photos = sorted({p.stem.rsplit("-s", 1)[0] for p in (work / "eval_pairs" / "hq").glob("*-s0.png")})
    chosen = [photos[round(i * (len(photos) - 1) / (count - 1))] for i in range(count)]
    for sub in ("lq", "hq"):
        folder = CI_PAIRS / sub
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for name in chosen:
            shutil.copyfile(work / "eval_pairs" / sub / f"{name}-s0.png", folder / f"{name}.png")
    return chosen


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="work folder (outside the repository)")
    stages = ["all", "data", "pairs", "reference", "sr", "decoder", "sr2", "ladder", "ship"]
    stages += ["teacher", "sr3", "sr3-distill", "ladder3"]  # nano v3
    ap.add_argument("--stage", default="all", choices=[*stages, *BASE_STAGES])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--draws", type=int, default=32, help="training pairs per train photo")
    ap.add_argument("--reference-steps", type=int, default=4000)
    ap.add_argument("--decoder-steps", type=int, default=2000)
    ap.add_argument("--sr-steps", type=int, default=6000)
    ap.add_argument("--sr2-steps", type=int, default=12000, help="sr2's last step (it starts at SR2_FROM_STEP)")
    ap.add_argument("--teacher-draws", type=int, default=8, help="training pairs per photo given a teacher output")
    ap.add_argument("--sr3-steps", type=int, default=12000)
    ap.add_argument("--sr3-pairs", default="v3_pairs", help="pairs folder in WORK (lq/, hq/) of the sr3 stage")
    ap.add_argument("--ship-step", type=int, default=None, help="checkpoint to ship (default: the last)")
    ap.add_argument("--ae-steps", type=int, default=3000, help="the autoencoder stage's steps")
    ap.add_argument("--prior-steps", type=int, default=400, help="the prior stage's steps")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    todo = lambda stage: args.stage in ("all", stage)  # noqa: E731
    if todo("data"):
        from recipes.nano.data import stage_data

        stage_data(work, log=log)
    if todo("pairs"):
        stage_pairs(work, args.draws)
    if todo("reference"):
        from recipes.nano.reference import load_pool, train_reference

        train_reference(load_pool(work / "train_pairs"), work / "ckpt" / "reference.pt", args.reference_steps, log=log)
    if todo("sr"):
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        subprocess.run(sr_command(work, args.sr_steps), check=True, env=env, cwd=REPO)
    if todo("decoder"):
        from recipes.nano.decoder import train_decoder
        from sanasr_cli.models.presets import NANO_DIR

        committed = REPO / "recipes" / "nano" / "resume" / "ckpt" / "decoder.pt"  # the shipped v2 decoder's checkpoint
        if not (work / "ckpt" / "decoder.pt").exists() and committed.exists():
            (work / "ckpt").mkdir(parents=True, exist_ok=True)
            shutil.copy2(committed, work / "ckpt" / "decoder.pt")
        train_decoder(work, NANO_DIR / "base", args.decoder_steps, log=log)
    if todo("sr2"):
        stage_sr2(work, args.sr2_steps, args.threads)
    if args.stage == "ladder3":
        from recipes.nano.ladder3 import stage_ladder3

        stage_ladder3(work, [work / name for name in V3_RUNS], log=log)
    if args.stage in ("sr3", "sr3-distill"):
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        command = sr3_command(work, args.sr3_steps, work / args.sr3_pairs, distill=args.stage == "sr3-distill")
        subprocess.run(command, check=True, env=env, cwd=REPO)
    if args.stage == "teacher":
        from recipes.nano.teacher import stage_teacher

        stage_teacher(work, args.teacher_draws, log=log)
    if todo("ladder"):
        stage_ladder(work)
    if todo("ship"):
        stage_ship(work, args.ship_step)
    if args.stage in BASE_STAGES:
        run_base_stage(work, args.stage, ae_steps=args.ae_steps, prior_steps=args.prior_steps, log=log)


if __name__ == "__main__":
    main()
