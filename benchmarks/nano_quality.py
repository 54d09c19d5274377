"""nano vs bicubic on photos nano never saw: Y-PSNR and SSIM (pyiqa, as `sanasr eval` computes them).

    python benchmarks/nano_quality.py                      # the shipped nano, seed 0
    python benchmarks/nano_quality.py --model runs/nano/sr --out /tmp/q.json

nano v1's held-out photos (PHOTOS in recipes/nano/data.py) are degraded with the Real-ESRGAN pipeline
(`sanasr degrade`'s code, default settings, a fixed seed per file) and written as PNG; the LQ files are then
upscaled x4 by bicubic interpolation and by nano (the paper's pipeline: no colour fix; and upscale's default
wavelet colour fix), quantised to 8 bits as written files are, and scored against the HQ. Reports per image and
the median, and writes JSON plus a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def heldout_photos() -> list[Path]:
    from recipes.nano.data import PHOTOS, package_data_dir

    return [package_data_dir(pkg) / rel for pkg, rel, split in PHOTOS if split == "heldout"]


def make_pairs(work: Path, seed: int) -> list[tuple[str, Path, Path]]:
    """Degrade the held-out photos into work/{hq,lq}/STEM.png (PNG copies first: JPEG sources are decoded once)."""
    from PIL import Image

    from sanasr_cli.data.degradation import RealESRGANDegrader
    from sanasr_cli.pipeline.degrade import degrade_files

    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    images = []
    for path in heldout_photos():
        dst = src / (path.stem + ".png")
        if not dst.exists():
            Image.open(path).convert("RGB").save(dst)
        images.append(dst)
    records = degrade_files(images, work, RealESRGANDegrader(), seed=seed)
    failed = [r.error for r in records if r.status != "ok"]
    if failed:
        raise SystemExit(f"degradation failed: {failed}")
    return [(Path(r.input).stem, Path(r.lq), Path(r.hq)) for r in records]


def quantise(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def score_pairs(model, pairs, color_fixes=("none", "wavelet")) -> list[dict]:
    """Per image: Y-PSNR and SSIM of bicubic and of nano (one entry per colour fix) against the HQ. The prompt is
    the model's prompt rule applied to the LQ file, as `sanasr eval` does (nano's rule: the template alone)."""
    from sanasr_cli.data.io import read_image
    from sanasr_cli.data.resample import upsample_bicubic
    from sanasr_cli.evaluation.metrics import METRICS, build_metric
    from sanasr_cli.pipeline.upscale import upscale_tensor
    from sanasr_cli.prompts.rule import prompt_for_image, tagger_from_rule

    psnr, ssim = build_metric(METRICS["psnr"]), build_metric(METRICS["ssim"])
    rule = model.description.prompt
    tagger = tagger_from_rule(rule, cache_dir="off")
    rows = []
    for key, lq_path, hq_path in pairs:
        lq, hq = read_image(lq_path)[0], read_image(hq_path)[0][None]
        prompt = prompt_for_image(rule, lq, lq_path, tagger)
        outputs = {"bicubic": quantise(upsample_bicubic(lq[None], 4))}
        start = time.perf_counter()
        for fix in color_fixes:
            with torch.no_grad():
                outputs[f"nano_{fix}"] = quantise(upscale_tensor(model, lq, prompt, color_fix=fix)[None])
        seconds = (time.perf_counter() - start) / len(color_fixes)
        row = {"image": key, "size": list(hq.shape[-2:][::-1]), "nano_seconds": round(seconds, 2)}
        for name, out in outputs.items():
            row[f"{name}_psnr_y"] = round(float(psnr(out, hq)), 3)
            row[f"{name}_ssim"] = round(float(ssim(out, hq)), 4)
        rows.append(row)
    return rows


def side_by_side(model, pair: tuple[str, Path, Path], out: Path, box: int = 160) -> None:
    """A PNG of one held-out photo's centre: bicubic | nano (upscale's defaults) | HQ, each `box` px square."""
    from PIL import Image

    from sanasr_cli.data.io import read_image
    from sanasr_cli.data.resample import upsample_bicubic
    from sanasr_cli.pipeline.upscale import upscale_tensor
    from sanasr_cli.prompts.template import build_prompt

    _, lq_path, hq_path = pair
    lq, hq = read_image(lq_path)[0], read_image(hq_path)[0]
    with torch.no_grad():
        sr = upscale_tensor(model, lq, build_prompt([], model.description.prompt.template))
    h, w = hq.shape[-2:]
    y, x = (h - box) // 2, (w - box) // 2
    panels = [upsample_bicubic(lq[None], 4)[0], sr, hq]
    row = torch.cat([p.clamp(0, 1)[:, y : y + box, x : x + box] for p in panels], dim=-1)
    img = (row.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(out)


def write_ci_pairs(pairs, dest: Path, count: int = 3, box: int = 128) -> list[tuple[str, Path, Path]]:
    """Centre crops (HQ box x box, LQ box/4) of the first `count` degraded held-out pairs: the CI test's data."""
    from sanasr_cli.data.io import read_image, write_image

    out = []
    for key, lq_path, hq_path in pairs[:count]:
        lq, hq = read_image(lq_path)[0], read_image(hq_path)[0]
        y, x = (hq.shape[-2] - box) // 8 * 4, (hq.shape[-1] - box) // 8 * 4  # multiples of 4: aligned with the LQ
        paths = (dest / "lq" / f"{key}.png", dest / "hq" / f"{key}.png")
        write_image(paths[0], lq[:, y // 4 : (y + box) // 4, x // 4 : (x + box) // 4])
        write_image(paths[1], hq[:, y : y + box, x : x + box])
        out.append((key, *paths))
    return out


def summarise(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k.endswith(("_psnr_y", "_ssim"))]
    median = {k: round(statistics.median(r[k] for r in rows), 4) for k in keys}
    for fix in ("none", "wavelet"):
        if f"nano_{fix}_psnr_y" in median:
            median[f"gain_{fix}_psnr_y"] = round(
                statistics.median(r[f"nano_{fix}_psnr_y"] - r["bicubic_psnr_y"] for r in rows), 3
            )
            median[f"gain_{fix}_ssim"] = round(
                statistics.median(r[f"nano_{fix}_ssim"] - r["bicubic_ssim"] for r in rows), 4
            )
    return median


def markdown(rows: list[dict], median: dict) -> str:
    head = (
        "| image | bicubic Y-PSNR / SSIM | nano Y-PSNR / SSIM | nano + wavelet fix Y-PSNR / SSIM |\n|---|---|---|---|\n"
    )
    lines = [
        f"| {r['image']} | {r['bicubic_psnr_y']:.2f} / {r['bicubic_ssim']:.4f} | "
        f"{r['nano_none_psnr_y']:.2f} / {r['nano_none_ssim']:.4f} | "
        f"{r['nano_wavelet_psnr_y']:.2f} / {r['nano_wavelet_ssim']:.4f} |"
        for r in rows
    ]
    m = median
    lines.append(
        f"| **median** | {m['bicubic_psnr_y']:.2f} / {m['bicubic_ssim']:.4f} | "
        f"{m['nano_none_psnr_y']:.2f} / {m['nano_none_ssim']:.4f} | "
        f"{m['nano_wavelet_psnr_y']:.2f} / {m['nano_wavelet_ssim']:.4f} |"
    )
    lines.append(
        f"| **median gain over bicubic** | | {m['gain_none_psnr_y']:+.2f} dB / {m['gain_none_ssim']:+.4f} | "
        f"{m['gain_wavelet_psnr_y']:+.2f} dB / {m['gain_wavelet_ssim']:+.4f} |"
    )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nano")
    ap.add_argument("--work", type=Path, default=Path("runs/nano_quality"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "nano_quality.json")
    ap.add_argument("--figure", type=Path, default=None, help="also write bicubic | nano | HQ of the first photo")
    ap.add_argument("--ci-pairs", type=Path, default=None, help="also write (and score) the CI test's 3 crops here")
    ap.add_argument("--progress", type=Path, default=None, help="also score every checkpoint of this train run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from sanasr_cli.models.sanasr import load_model

    pairs = make_pairs(args.work, args.seed)
    model = load_model(args.model)
    rows = score_pairs(model, pairs)
    median = summarise(rows)
    table = markdown(rows, median)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(
        model=str(args.model),
        seed=args.seed,
        degradation="Real-ESRGAN default (sanasr degrade), seed per file",
        metrics="pyiqa psnr (Y of YCbCr) and ssim (Y), 8-bit outputs, no border crop",
        machine="2-core x86-64 CPU, fp32",
        images=rows,
        median=median,
        markdown=table,
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.ci_pairs:
        ci_rows = score_pairs(model, write_ci_pairs(pairs, args.ci_pairs))
        ci = summarise(ci_rows)
        result["ci_pairs"] = dict(images=ci_rows, median=ci, median_gain_none_psnr_y=ci["gain_none_psnr_y"])
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(markdown(ci_rows, ci))
    if args.progress:  # SR gain of each checkpoint of the training run on the way (its live adapter, no colour fix)
        from sanasr_cli.evaluation.model_eval import find_checkpoints

        result["progress"] = []
        for step, folder in find_checkpoints(args.progress):
            med = summarise(score_pairs(load_model(folder), pairs, color_fixes=("none",)))
            result["progress"].append(
                dict(step=step, gain_psnr_y=med["gain_none_psnr_y"], gain_ssim=med["gain_none_ssim"])
            )
            print(result["progress"][-1], flush=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.figure:
        side_by_side(model, pairs[0], args.figure)


if __name__ == "__main__":
    main()
