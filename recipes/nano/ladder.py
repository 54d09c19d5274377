"""nano's evaluation protocol and its ladder: where each method lands on the same held-out pairs.

Pairs: every held-out photo, EVAL_SEEDS Real-ESRGAN draws (recipes/nano/pairs.py: a 384 px region degraded whole,
the aligned 256 px HQ / 64 px LQ centre kept). Each method's output is quantised to 8 bits (as a written file is)
and scored against the HQ with pyiqa's Y-PSNR and SSIM, exactly as `sanasr eval` computes them
(sanasr_cli.evaluation.metrics: psnry on YCbCr's Y; ssim on Y rounded to 0..255). Reported: the median and the mean
of the per-pair gain over bicubic, overall and per photo, and the same for SSIM.

Rungs: bicubic; D(E(bicubic)) (the autoencoder alone: what a zero update of the restorer gives, where nano's SR
climbs from); D(E(HQ)) (the autoencoder's ceiling); the reference learner (recipes/nano/reference.py); nano.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import torch

Method = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (lq (B,3,h,w), bicubic (B,3,H,W)) -> (B,3,H,W)


def quantise(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def photo_of(stem: str) -> str:
    """The photo a pair stem (NAME-sK) was drawn from."""
    return stem.rsplit("-s", 1)[0]


class Scorer:
    """pyiqa's Y-PSNR and SSIM as `sanasr eval` builds them."""

    def __init__(self):
        from sanasr_cli.evaluation.metrics import METRICS, build_metric

        self.psnr, self.ssim = build_metric(METRICS["psnr"]), build_metric(METRICS["ssim"])

    def __call__(self, out: torch.Tensor, hq: torch.Tensor) -> tuple[list[float], list[float]]:
        with torch.no_grad():
            p = self.psnr(quantise(out), hq).flatten().tolist()
            s = self.ssim(quantise(out), hq).flatten().tolist()
        return p, s


def run_method(method: Method, lq: torch.Tensor, batch: int = 8) -> torch.Tensor:
    from sanasr_cli.data.resample import upsample_bicubic

    outs = []
    with torch.no_grad():
        for i in range(0, len(lq), batch):
            x = lq[i : i + batch]
            outs.append(method(x, upsample_bicubic(x, 4)).clamp(0, 1))
    return torch.cat(outs)


def score_method(method: Method, stems, lq, hq, scorer: Scorer | None = None) -> dict:
    """Per-pair Y-PSNR / SSIM of one method: {"psnr_y": [...], "ssim": [...]} in stem order."""
    scorer = scorer or Scorer()
    out = run_method(method, lq)
    psnr, ssim = [], []
    for i in range(0, len(out), 16):
        p, s = scorer(out[i : i + 16], hq[i : i + 16])
        psnr += p
        ssim += s
    return dict(psnr_y=[round(v, 4) for v in psnr], ssim=[round(v, 5) for v in ssim])


def summary(scores: dict, bicubic: dict, stems: list[str]) -> dict:
    """Median and mean gain over bicubic (per pair), overall and per photo; and the absolute medians."""
    gain_p = [a - b for a, b in zip(scores["psnr_y"], bicubic["psnr_y"], strict=True)]
    gain_s = [a - b for a, b in zip(scores["ssim"], bicubic["ssim"], strict=True)]
    per_photo: dict[str, dict] = {}
    for stem, gp, gs in zip(stems, gain_p, gain_s, strict=True):
        entry = per_photo.setdefault(photo_of(stem), dict(gain_psnr_y=[], gain_ssim=[]))
        entry["gain_psnr_y"].append(gp)
        entry["gain_ssim"].append(gs)
    return dict(
        median_psnr_y=round(statistics.median(scores["psnr_y"]), 3),
        median_ssim=round(statistics.median(scores["ssim"]), 4),
        median_gain_psnr_y=round(statistics.median(gain_p), 3),
        mean_gain_psnr_y=round(statistics.fmean(gain_p), 3),
        median_gain_ssim=round(statistics.median(gain_s), 4),
        mean_gain_ssim=round(statistics.fmean(gain_s), 4),
        per_photo={
            k: dict(
                median_gain_psnr_y=round(statistics.median(v["gain_psnr_y"]), 3),
                mean_gain_psnr_y=round(statistics.fmean(v["gain_psnr_y"]), 3),
                median_gain_ssim=round(statistics.median(v["gain_ssim"]), 4),
            )
            for k, v in sorted(per_photo.items())
        },
    )


def bicubic_method(lq: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
    return bicubic


def autoencoder_methods(codec) -> dict[str, Method]:
    """D(E(bicubic)) and, as a method of the HQ (set by `with_hq`), D(E(HQ))."""

    def recon(x: torch.Tensor) -> torch.Tensor:
        return codec.crop(codec.decode(codec.encode_padded(x)), *x.shape[-2:])

    return {"autoencoder(bicubic)": lambda lq, bic: recon(bic)}, recon


def model_method(model, prompt: str) -> Method:
    """A loaded SanaSR model's one-step restore of the bicubic input, the prompt encoded once (nano's rule: the
    quality template alone, the same for every image), no colour fix: the paper's pipeline."""
    from sanasr_cli.pipeline.upscale import restore_upsampled

    embeds = model.prompts.encode_for_transformer([prompt], device=model.device)

    def method(lq: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
        e, m = (t.expand(len(lq), *t.shape[1:]) for t in embeds)
        return restore_upsampled(model, bicubic, e, m, lq=lq)

    return method


def markdown(rows: dict[str, dict]) -> str:
    lines = [
        "| rung | median Y-PSNR | median SSIM | median gain (dB) | mean gain (dB) | median SSIM gain |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in rows.items():
        lines.append(
            f"| {name} | {s['median_psnr_y']:.2f} | {s['median_ssim']:.4f} | {s['median_gain_psnr_y']:+.2f} | "
            f"{s['mean_gain_psnr_y']:+.2f} | {s['median_gain_ssim']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def load_eval_pairs(work: Path):
    from recipes.nano.pairs import read_pairs

    return read_pairs(work / "eval_pairs")
