"""nano v3's ladder: the same 200 held-out pairs as v2's, with the teacher's rungs and no-reference metrics.

Every rung's outputs are quantised to 8 bits (as a written file is) and scored against the HQ with pyiqa's Y-PSNR
and SSIM as `sanasr eval` computes them, and without a reference with `sanasr eval`'s NIQE and BRISQUE (lower is
better for both). The pairs are 256 px: NIQE sees only 4 of its 96 px blocks per scale there, so a single pair's
NIQE is noisy (docs/eval-bench.md measures how much); medians over the 200 pairs are what the ladder compares.

Rungs (cached per rung in WORK/ladder3.json; WORK/ladder3.md is the table):
  bicubic; HQ (no-reference metrics only: what the photos themselves score)
  teacher: Real-ESRGAN x4plus's outputs (the teacher cache of the `teacher` stage)
  D(E(teacher)): nano's autoencoder on the teacher's outputs: can nano's latent carry the teacher's sharpness
  nano v2 (shipped before v3), and each nano v3 checkpoint (EMA adapter merged), no colour fix
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import torch

from recipes.nano.ladder import quantise

METRICS = ("psnr_y", "ssim", "niqe", "brisque")
LOWER_IS_BETTER = {"niqe", "brisque"}


class Ladder3:
    def __init__(self, work: Path, log=print):
        from recipes.nano.ladder import load_eval_pairs

        self.work, self.log = work, log
        self.file = work / "ladder3.json"
        self.stems, self.lq, self.hq = load_eval_pairs(work)
        self.data = json.loads(self.file.read_text()) if self.file.exists() else {"raw": {}}
        self._metrics = None

    def metrics(self):
        if self._metrics is None:
            from sanasr_cli.evaluation.metrics import METRICS as SPECS
            from sanasr_cli.evaluation.metrics import build_metric

            self._metrics = {
                "psnr_y": build_metric(SPECS["psnr"]), "ssim": build_metric(SPECS["ssim"]),
                "niqe": build_metric(SPECS["niqe"]), "brisque": build_metric(SPECS["brisque"]),
            }  # fmt: skip
        return self._metrics

    def has(self, name: str) -> bool:
        return name in self.data["raw"]

    def score(self, name: str, outputs: torch.Tensor, reference: bool = True) -> dict:
        """Score (N, 3, 256, 256) outputs in stem order; cached under `name`."""
        if name not in self.data["raw"]:
            scores: dict[str, list[float]] = {m: [] for m in METRICS}
            with torch.no_grad():
                for i in range(0, len(outputs), 8):
                    out, hq = quantise(outputs[i : i + 8]), self.hq[i : i + 8]
                    for m, metric in self.metrics().items():
                        if m in ("psnr_y", "ssim"):
                            values = metric(out, hq).flatten().tolist() if reference else [float("nan")] * len(out)
                        else:
                            values = metric(out).flatten().tolist()
                        scores[m] += [round(float(v), 5) for v in values]
            self.data["raw"][name] = scores
            self.save()
        row = self.summary(name)
        self.log(
            f"ladder3: {name}: gain {row['median_gain_psnr_y']:+.3f} median / {row['mean_gain_psnr_y']:+.3f} mean dB, "
            f"SSIM {row['median_gain_ssim']:+.4f}, NIQE {row['median_niqe']:.2f}, BRISQUE {row['median_brisque']:.1f}"
        )
        return row

    def summary(self, name: str) -> dict:
        raw, bic = self.data["raw"][name], self.data["raw"]["bicubic"]
        gain = [a - b for a, b in zip(raw["psnr_y"], bic["psnr_y"], strict=True)]
        gain_s = [a - b for a, b in zip(raw["ssim"], bic["ssim"], strict=True)]
        finite = lambda xs: [x for x in xs if x == x]  # noqa: E731 - NaN (HQ's PSNR; a flat image's BRISQUE) left out
        median = lambda xs: round(statistics.median(finite(xs)), 4) if finite(xs) else float("nan")  # noqa: E731
        return {
            "median_psnr_y": median(raw["psnr_y"]), "median_ssim": median(raw["ssim"]),
            "median_gain_psnr_y": median(gain), "mean_gain_psnr_y": round(statistics.fmean(finite(gain)), 4)
            if finite(gain) else float("nan"),
            "median_gain_ssim": median(gain_s), "median_niqe": median(raw["niqe"]),
            "median_brisque": median(raw["brisque"]),
        }  # fmt: skip

    def save(self) -> None:
        rows = {name: self.summary(name) for name in self.data["raw"] if "bicubic" in self.data["raw"]}
        self.data["rows"] = rows
        tmp = self.file.with_name(self.file.name + ".tmp")
        tmp.write_text(json.dumps(dict(self.data, stems=self.stems), indent=1) + "\n")
        os.replace(tmp, self.file)
        (self.work / "ladder3.md").write_text(markdown(rows))


def markdown(rows: dict[str, dict]) -> str:
    lines = [
        "| rung | median Y-PSNR | median gain (dB) | mean gain (dB) | median SSIM gain | median NIQE | median BRISQUE |",  # noqa: E501
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in rows.items():
        lines.append(
            f"| {name} | {s['median_psnr_y']:.2f} | {s['median_gain_psnr_y']:+.2f} | {s['mean_gain_psnr_y']:+.2f} | "
            f"{s['median_gain_ssim']:+.4f} | {s['median_niqe']:.2f} | {s['median_brisque']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def teacher_outputs(work: Path, lq_files: list[Path]) -> torch.Tensor:
    """The cached teacher outputs of the evaluation LQ files, (N, 3, 256, 256) in [0, 1]."""
    from recipes.nano.teacher import TEACHER, teacher_cache_dir
    from sanasr_cli.data.io import read_image
    from sanasr_cli.peers.cache import TeacherCache
    from sanasr_cli.peers.peer import load_peer

    cache = TeacherCache(load_peer(TEACHER), teacher_cache_dir(work))
    missing = cache.missing(lq_files)
    if missing:
        raise SystemExit(f"ladder3: {len(missing)} evaluation pairs have no teacher output: run --stage teacher")
    return torch.stack([read_image(cache.path_for(p))[0] for p in lq_files])


def stage_ladder3(work: Path, runs: list[Path], log=print) -> None:
    from recipes.nano.ladder import autoencoder_methods, model_method, run_method
    from sanasr_cli.data.resample import upsample_bicubic
    from sanasr_cli.models.merge import merge_model
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.prompts.template import DEFAULT_TEMPLATE, build_prompt

    ladder = Ladder3(work, log)
    if not ladder.has("bicubic"):
        ladder.score("bicubic", upsample_bicubic(ladder.lq, 4).clamp(0, 1))
    ladder.score("HQ (no-reference metrics)", ladder.hq, reference=False)
    lq_files = [work / "eval_pairs" / "lq" / f"{s}.png" for s in ladder.stems]
    teacher = teacher_outputs(work, lq_files)
    ladder.score("teacher: Real-ESRGAN x4plus", teacher)
    shipped = load_model("nano")
    _, recon = autoencoder_methods(shipped.codec)
    if not ladder.has("D(E(teacher)), nano v2's autoencoder"):
        with torch.no_grad():
            outs = torch.cat([recon(teacher[i : i + 8]) for i in range(0, len(teacher), 8)])
        ladder.score("D(E(teacher)), nano v2's autoencoder", outs)
    prompt = build_prompt([], DEFAULT_TEMPLATE)
    if not ladder.has("nano v2 (shipped before)"):
        ladder.score("nano v2 (shipped before)", run_method(model_method(shipped, prompt), ladder.lq))
    for run in runs:
        steps = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
        for step in steps:
            name = f"{run.name}, step {step} (EMA)"
            if ladder.has(name):
                ladder.score(name, None)
                continue
            model = load_model(run / f"checkpoint-{step}")
            merge_model(model, ema=True)
            ladder.score(name, run_method(model_method(model, prompt), ladder.lq))
