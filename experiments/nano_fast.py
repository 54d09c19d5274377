"""Build and measure `nano-fast`: nano with distilled students of its DC-AE (`sanasr distill`), one command.

    python experiments/nano_fast.py --work runs/nano_fast                  # all stages
    python experiments/nano_fast.py --work runs/nano_fast --stage measure  # only re-measure (e.g. after nano's SR
                                                                          # transformer was retrained)
Stages (a finished stage is skipped on rerun; an interrupted distillation resumes from its last checkpoint):
  1. data     nano's train photos (recipes/nano/base.py: nano v1's photos, split "train" only: the held-out photos are
              never read here except by `measure`)
  2. encoder  `sanasr distill encoder nano` (latent MSE against nano's frozen DC-AE encoder on the x4 bicubic image)
  3. decoder  `sanasr distill decoder` from stage 2's model (image MSE against nano's DC-AE decoder on z_H and on
              the z_hat of the shipped nano SR transformer, restored from the student encoder's z_L)
  4. ship     the two students into sanasr_cli/models/nano_fast/{encoder,decoder} (`--model nano-fast` = the
              shipped nano + these students)
  5. measure  on nano's held-out photos (benchmarks/nano_quality.py's pairs and scoring): median Y-PSNR gain over
              bicubic of nano and of nano-fast, and the encode + decode MACs of both at 512^2 (meta device, as
              `sanasr bench` counts); also the same on the CI test's three crops (tests/data/nano_heldout).
              Writes sanasr_cli/models/nano_fast/report.json (the CI test's margins come from it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from sanasr_cli.models.presets import NANO_FAST_DIR  # noqa: E402

STAGES = ("data", "encoder", "decoder", "ship", "measure")
SETTINGS = {
    "encoder": dict(steps=2000, batch_size=8, crop=64, lr=2e-3, save_every=250, seed=0),
    "decoder": dict(steps=2500, batch_size=8, crop=64, lr=2e-3, save_every=250, seed=0),
}
MACS_SIZE = 512


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stage_data(work: Path) -> Path:
    from recipes.nano.base import v1_photos, v1_root

    if not (v1_root(work) / "photos" / "train").is_dir():
        v1_photos(work)
    return v1_root(work) / "photos" / "train"


def stage_distill(work: Path, kind: str, model: str, photos: Path) -> Path:
    from sanasr_cli.training.distill import DistillConfig, distill

    out = work / ("nano_enc" if kind == "encoder" else "nano_fast")
    if (out / "sanasr.json").is_file():
        log(f"{kind}: done before ({out})")
        return out
    config = DistillConfig(kind=kind, model=model, hq=[str(photos)], output=str(out), **SETTINGS[kind])
    t0 = time.time()

    def on_step(step, total, loss):
        if step % 50 == 0:
            log(f"{kind}: step {step}/{total} loss {loss:.6f} ({(time.time() - t0) / step:.2f} s/step this run)")

    result = distill(config, on_step=on_step, on_message=log)
    log(f"{kind}: {result.steps} steps, student vs teacher {result.validation_psnr:.2f} dB, {result.seconds:.0f} s")
    return out


def stage_ship(fast: Path) -> None:
    NANO_FAST_DIR.mkdir(parents=True, exist_ok=True)
    for kind in ("encoder", "decoder"):
        dst = NANO_FAST_DIR / kind
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(fast / kind, dst)
        config = dst / "config.json"  # a path of this machine, meaningless where the package is installed
        config.write_text(
            json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "_name_or_path"}, indent=2)
            + "\n"
        )
    desc = json.loads((fast / "sanasr.json").read_text())
    records = NANO_FAST_DIR / "distill.json"
    # a student taken over from the shipped nano-fast (not distilled in this work folder) keeps its record
    distilled = {**(json.loads(records.read_text()) if records.is_file() else {}), **desc["distill"]}
    records.write_text(json.dumps(distilled, indent=2) + "\n")
    log(f"ship: students copied into {NANO_FAST_DIR}")


def codec_macs(spec: str, size: int = MACS_SIZE) -> dict:
    """GMACs of encode and decode at size^2 output, counted on the meta device as `sanasr bench` counts."""
    from sanasr_cli.evaluation.bench import build_sanasr, measure_macs, sana_pipeline

    model = build_sanasr(spec, "meta", random_weights=True)
    cost = measure_macs(sana_pipeline(model), size, 1)
    enc, dec = cost.parts["vae_encode"]["macs"], cost.parts["vae_decode"]["macs"]
    return dict(
        encode_gmacs=round(enc / 1e9, 4),
        decode_gmacs=round(dec / 1e9, 4),
        encode_decode_gmacs=round((enc + dec) / 1e9, 4),
        end_to_end_gmacs=round(cost.end_to_end["macs"] / 1e9, 4),
        encode_params=cost.parts["vae_encode"]["params"],
        decode_params=cost.parts["vae_decode"]["params"],
    )


def ci_pairs() -> list:
    pairs = REPO / "tests" / "data" / "nano_heldout"
    return [(p.stem, p, pairs / "hq" / p.name) for p in sorted((pairs / "lq").glob("*.png"))]


def stage_measure(work: Path, seed: int = 0) -> dict:
    from nano_quality import make_pairs, score_pairs, summarise

    from sanasr_cli.models.sanasr import load_model

    pairs = make_pairs(work / "quality", seed)
    report = {"machine": "2-core x86-64 CPU, fp32, 1 torch thread", "seed": seed, "macs_size": MACS_SIZE}
    for name in ("nano", "nano-fast"):
        model = load_model(name)
        rows = score_pairs(model, pairs)
        ci_rows = score_pairs(model, ci_pairs())
        report[name] = dict(
            heldout=dict(images=rows, median=summarise(rows)),
            ci_pairs=dict(images=ci_rows, median=summarise(ci_rows)),
            macs=codec_macs(name),
        )
        m = report[name]["heldout"]["median"]
        log(f"measure: {name}: median gain {m['gain_none_psnr_y']:+.3f} dB (wavelet {m['gain_wavelet_psnr_y']:+.3f})")
    nano, fast = report["nano"], report["nano-fast"]
    report["summary"] = dict(
        nano_gain_db=nano["heldout"]["median"]["gain_none_psnr_y"],
        nano_fast_gain_db=fast["heldout"]["median"]["gain_none_psnr_y"],
        gain_gap_db=round(
            fast["heldout"]["median"]["gain_none_psnr_y"] - nano["heldout"]["median"]["gain_none_psnr_y"], 3
        ),
        gain_gap_wavelet_db=round(
            fast["heldout"]["median"]["gain_wavelet_psnr_y"] - nano["heldout"]["median"]["gain_wavelet_psnr_y"], 3
        ),
        ci_gain_gap_db=round(
            fast["ci_pairs"]["median"]["gain_none_psnr_y"] - nano["ci_pairs"]["median"]["gain_none_psnr_y"], 3
        ),
        nano_fast_ci_gain_db=fast["ci_pairs"]["median"]["gain_none_psnr_y"],
        encode_decode_macs_ratio=round(nano["macs"]["encode_decode_gmacs"] / fast["macs"]["encode_decode_gmacs"], 3),
    )
    (NANO_FAST_DIR / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (NANO_FAST_DIR / "README.md").write_text(model_card(report))
    log(f"measure: {json.dumps(report['summary'])}")
    print(markdown(report))
    return report


def model_card(report: dict) -> str:
    """models/nano_fast/README.md, written by the measure stage from report.json and the distill records."""
    distill = json.loads((NANO_FAST_DIR / "distill.json").read_text())
    s = report["summary"]
    size = sum(p.stat().st_size for k in ("encoder", "decoder") for p in (NANO_FAST_DIR / k).rglob("*") if p.is_file())
    rows = []
    for kind in ("encoder", "decoder"):
        d = distill[kind]
        cfg = json.loads((NANO_FAST_DIR / kind / "config.json").read_text())
        rows.append(
            f"| {kind} | {cfg['_class_name']}: stages {cfg['block_out_channels']} x {cfg['layers_per_block']} "
            f"{'/'.join(cfg['block_types'])}, {d['params']:,} parameters | {d['loss']} | {d['steps']} steps, batch "
            f"{d['batch_size']}, {d['crop']}px HQ crops, AdamW {d['lr']} | {d['first_loss']:.5f} -> "
            f"{d['final_loss']:.5f} | {d['validation_psnr_vs_teacher']:.2f} dB |"
        )
    ok = s["gain_gap_db"] >= -0.3 and s["encode_decode_macs_ratio"] >= 4
    gaps = sorted(
        (b["nano_none_psnr_y"] - a["nano_none_psnr_y"], a["image"])
        for a, b in zip(report["nano"]["heldout"]["images"], report["nano-fast"]["heldout"]["images"], strict=True)
    )
    if distill["decoder"]["from_model"] == "nano-fast":
        decoder_from = (
            "from the shipped nano-fast (its encoder student, kept: nano's encoder did not change when its decoder "
            "and SR transformer did)"
        )
    else:
        decoder_from = "from the encoder stage's model"
    if s["nano_gain_db"] > 0 and s["nano_fast_gain_db"] > 0:
        verdict = (
            f"Both beat bicubic here by median (no colour fix): nano-fast gains {s['nano_fast_gain_db']:+.3f} dB where "
            f"nano gains {s['nano_gain_db']:+.3f} dB, at {1 / s['encode_decode_macs_ratio']:.0%} of the autoencoder's "
            "MACs. "
            "nano's own measurement (200 held-out pairs) is in its model card."
        )
    else:
        verdict = (
            "Not both beat bicubic here by median (no colour fix): nano-fast keeps nano's quality at a fraction of "
            "the autoencoder's cost; it does not add any."
        )
    return f"""# nano-fast: nano with distilled students of its DC-AE

`--model nano-fast` = the shipped `nano` (its base, its SR transformer) plus the two students in this folder
({size / 1024:.0f} KB of safetensors): `encoder/` reads the LQ image at its own resolution and predicts nano's latent
z_L = E(bicubic_x4(x_L)); `decoder/` replaces nano's DC-AE decoder. Both are diffusers-style folders built from
diffusers' own DC-AE blocks (`sanasr_cli/models/students.py`). `--full-vae` runs nano's own DC-AE instead.
Because only the students ship here, nano-fast follows nano's SR transformer: after nano is retrained, rerun
`python experiments/nano_fast.py --stage measure` (this card and report.json are rewritten; if the gap below
widened, also rerun the decoder stage, whose z_hat came from the nano SR transformer of its day).

## Recipe

`python experiments/nano_fast.py --work WORK --threads 1` on a 2-core x86-64 CPU, fp32, seed 0; nano's
12 train photos only (recipes/nano/data.py PHOTOS), Real-ESRGAN degradation online; the decoder is distilled
{decoder_from}, so its z_hat is nano's restoration of the *student* encoder's z_L.

| student | architecture | loss | settings | loss first -> last | student vs teacher on 4 validation crops (RGB PSNR) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

The encoder's validation PSNR compares the teacher decoder's images of the student and the teacher latents; the
decoder's compares the student's and the teacher's images of the same latents. No LPIPS (no VGG weights offline).

## Measured on nano's 4 held-out photos ({report["machine"]})

Degraded with the Real-ESRGAN pipeline (fixed seed per file), upscaled x4 without colour fix, 8-bit, Y-PSNR by
pyiqa, exactly as `benchmarks/nano_quality.py` scores nano. MACs: FlopCounterMode on the meta device, batch 1, as
`sanasr bench` counts, at {report["macs_size"]}x{report["macs_size"]} output.

{markdown(report)}
- median gain over bicubic: nano {s["nano_gain_db"]:+.3f} dB, nano-fast {s["nano_fast_gain_db"]:+.3f} dB: gap
  **{s["gain_gap_db"]:+.3f} dB** (with upscale's wavelet colour fix: {s["gain_gap_wavelet_db"]:+.3f} dB); the issue
  asks for the gap to be within 0.3 dB
- encode + decode MACs: **{s["encode_decode_macs_ratio"]:.2f}x lower** than nano's (the issue asks for 4x)
- {"both targets met" if ok else "NOT MET: see the numbers above"}; on the CI test's three held-out crops
  (tests/data/nano_heldout) the gap is {s["ci_gain_gap_db"]:+.3f} dB, nano-fast's gain
  {s["nano_fast_ci_gain_db"]:+.3f} dB (tests/test_nano_fast.py holds it to 0.4 dB and reproduces it to 0.05 dB)

The median hides the spread: per image, nano-fast's Y-PSNR differs from nano's by {gaps[0][0]:+.2f} dB
({gaps[0][1]}) to {gaps[-1][0]:+.2f} dB ({gaps[-1][1]}). The student decoder reproduces the teacher's image to
{distill["decoder"]["validation_psnr_vs_teacher"]:.1f} dB on the validation crops, not exactly: where it errs most
({gaps[0][1]}) its error adds to nano's.

{verdict}
"""


def markdown(report: dict) -> str:
    nano, fast = report["nano"]["heldout"]["images"], report["nano-fast"]["heldout"]["images"]
    lines = [
        "| image | bicubic Y-PSNR | nano Y-PSNR (gain) | nano-fast Y-PSNR (gain) |",
        "|---|---|---|---|",
    ]
    for a, b in zip(nano, fast, strict=True):
        lines.append(
            f"| {a['image']} | {a['bicubic_psnr_y']:.2f} | {a['nano_none_psnr_y']:.2f} "
            f"({a['nano_none_psnr_y'] - a['bicubic_psnr_y']:+.2f}) | {b['nano_none_psnr_y']:.2f} "
            f"({b['nano_none_psnr_y'] - b['bicubic_psnr_y']:+.2f}) |"
        )
    s = report["summary"]
    lines.append(f"| **median gain** | | {s['nano_gain_db']:+.2f} dB | {s['nano_fast_gain_db']:+.2f} dB |")
    m0, m1 = report["nano"]["macs"], report["nano-fast"]["macs"]
    lines += [
        "",
        f"| GMACs at {report['macs_size']}^2 | encode | decode | encode + decode | end to end |",
        "|---|---|---|---|---|",
        f"| nano | {m0['encode_gmacs']:.2f} | {m0['decode_gmacs']:.2f} | {m0['encode_decode_gmacs']:.2f} | "
        f"{m0['end_to_end_gmacs']:.2f} |",
        f"| nano-fast | {m1['encode_gmacs']:.2f} | {m1['decode_gmacs']:.2f} | {m1['encode_decode_gmacs']:.2f} | "
        f"{m1['end_to_end_gmacs']:.2f} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/nano_fast"))
    ap.add_argument("--stage", choices=STAGES, default=None, help="run only this stage (the ones before must exist)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    todo = [args.stage] if args.stage else list(STAGES)
    photos = args.work / "v1" / "photos" / "train"
    if "data" in todo:
        photos = stage_data(args.work)
    if "encoder" in todo:
        stage_distill(args.work, "encoder", "nano", photos)
    if "decoder" in todo:
        # the encoder student of this work folder, else the shipped one (still valid while nano's encoder is
        # unchanged, as when nano v2 changed only the decoder: then only the decoder needs distilling again)
        enc = args.work / "nano_enc"
        stage_distill(args.work, "decoder", str(enc) if (enc / "sanasr.json").is_file() else "nano-fast", photos)
    if "ship" in todo:
        stage_ship(args.work / "nano_fast")
    if "measure" in todo:
        stage_measure(args.work)


if __name__ == "__main__":
    main()
