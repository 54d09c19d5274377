"""The paper's ablations at nano scale: pruning strategies (Table 6), loss terms (Fig. 4b), tau_g (Fig. 4c),
prompts (Fig. 4a). One seed, one command, resumable.

    python experiments/nano_ablations.py                         # every cell; finished cells are skipped
    python experiments/nano_ablations.py --cells prune/fisher    # one cell (and the references)

Every cell is a model directory made with the CLI (`sanasr prune`, or `sanasr train` + `sanasr merge-lora --ema`)
and scored exactly like the shipped nano (benchmarks/nano_quality.py: the held-out photos degraded with the
Real-ESRGAN pipeline, a fixed seed per file, upscaled x4 with the paper's pipeline (no colour fix), 8-bit outputs,
Y-PSNR and SSIM by pyiqa as `sanasr eval` computes them, median over images), beside bicubic and the full model.
Each finished cell is written to the JSON at once; a rerun skips it (an interrupted training run resumes from its
last checkpoint).

Groups
  prune      the merged nano pruned to about 60% of its blocks (first and last kept) with
             --strategy fisher | tail | magnitude | random (seeds s, s+1, s+2). No recovery fine-tune: the paper
             does none (App. B: prune, then validate against a 3% drop gate).
  objective  the SR adaptation retrained from the nano base: full objective / no L_align / no L_cons / pixel
             loss only (lambda_p is 0 in every cell: no LPIPS weights offline, as for the shipped nano).
  tau_g      tau_g in {500, 700, 900, 999}, for training and the saved model's inference.
  prompt     template only (nano's rule) / `file` sidecar tags + template / no prompt (empty template).
Groups objective, tau_g and prompt share one shorter schedule (--steps); the full objective, tau_g 900 and the
template-only prompt are one configuration, trained once and listed in each of the three groups.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "experiments"))

from nano_quality import make_pairs, score_pairs, summarise  # noqa: E402
from nano_v1 import sr_train_command, write_json, write_prior_dir  # noqa: E402

from recipes.nano.base import v1_photos, v1_root  # noqa: E402
from recipes.nano.data import PHOTOS  # noqa: E402

# Content tags per photo (the `file` tagger's sidecars), written by hand from the photo's content with words the
# nano tokenizer knows; they stand in for DAPE, which is not available offline. Keyed by the manifest's path.
TAGS = {
    "astronaut.png": "woman, person, portrait, face, smile, white",
    "rocket.jpg": "tower, sky, metal, white",
    "motorcycle_left.png": "metal, red, black, wall",
    "motorcycle_right.png": "metal, red, black, wall",
    "ihc.png": "texture, pattern, brown, blue",
    "brick.png": "brick, wall, texture, pattern",
    "grass.png": "grass, texture, pattern",
    "gravel.png": "stone, rock, texture, pattern",
    "camera.png": "man, person, field, sky",
    "coins.png": "metal, pattern, dark",
    "moon.png": "rock, texture, gray",
    "china.jpg": "building, roof, tree, sky",
    "chelsea.png": "cat, animal, face, eyes, brown",
    "coffee.png": "cup, plate, table, red, brown",
    "flower.jpg": "flower, plant, garden, pink, green",
    "grace_hopper.jpg": "woman, person, portrait, face, hair",
}
PRUNE_KEEP = 0.6  # share of blocks kept (rounded; first and last always kept)
REFERENCE = "objective/full"  # the configuration shared by the retrained groups


@dataclass
class Cell:
    group: str
    name: str
    kind: str  # reference | prune | train
    flags: tuple[str, ...] = ()  # extra CLI flags (prune: --strategy ...; train: the one change)
    same_as: str | None = None  # listed in this group, measured once under another id
    notes: str = ""

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"


def cells(seed: int) -> list[Cell]:
    out = [
        Cell("reference", "bicubic", "reference", notes="bicubic x4 of the same LQ files"),
        Cell("reference", "full", "reference", notes="the model pruned below, unpruned (nano: shipped, 1000 steps)"),
    ]
    for strategy in ("fisher", "tail", "magnitude"):
        out.append(Cell("prune", strategy, "prune", ("--strategy", strategy, "--seed", str(seed))))
    for s in (seed, seed + 1, seed + 2):
        out.append(Cell("prune", f"random-seed{s}", "prune", ("--strategy", "random", "--seed", str(s))))
    out += [
        Cell("objective", "full", "train", notes="L_rec (MSE) + L_align + L_cons"),
        Cell("objective", "no-align", "train", ("--lambda-align", "0"), notes="lambda_a = 0"),
        Cell("objective", "no-cons", "train", ("--lambda-consistency", "0"), notes="lambda_c = 0"),
        Cell("objective", "pixel-only", "train", ("--lambda-align", "0", "--lambda-consistency", "0"), notes="MSE"),
    ]
    for tau in (500, 700, 900, 999):
        same = REFERENCE if tau == 900 else None
        out.append(Cell("tau_g", str(tau), "train", ("--tau-g", str(tau)), same_as=same))
    out += [
        Cell("prompt", "template", "train", same_as=REFERENCE, notes="nano's rule: the App. B template"),
        Cell("prompt", "tags+template", "train", ("--tagger", "file"), notes="hand-written sidecar tags + template"),
        Cell("prompt", "none", "train", ("--template", ""), notes="empty prompt"),
    ]
    return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cli(*args: str, threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    log("sanasr " + " ".join(args))
    subprocess.run([sys.executable, "-m", "sanasr_cli", *args], check=True, env=env, cwd=REPO)


# ---------------------------------------------------------------- data


def stage(work: Path, pairs_from: Path | None, seed: int) -> tuple[Path, list[tuple[str, Path, Path]]]:
    """Training photos (with tag sidecars) and the evaluation pairs (with tag sidecars beside the LQ files).

    pairs_from None: the nano held-out photos degraded as nano_quality.py does; else a folder with lq/ and hq/ (the
    CI test's crops), copied so that the sidecars are never written into it."""
    manifest = v1_photos(work)
    for m in manifest:
        tags = TAGS.get(Path(m["path"]).name)
        if tags:
            (v1_root(work) / "photos" / m["file"]).with_suffix(".txt").write_text(tags + "\n")
    if pairs_from is None:
        pairs = make_pairs(work / "pairs", seed)
    else:
        pairs = []
        for lq in sorted((pairs_from / "lq").glob("*.png")):
            dst = work / "pairs" / "lq" / lq.name, work / "pairs" / "hq" / lq.name
            for src, d in zip((lq, pairs_from / "hq" / lq.name), dst, strict=True):
                d.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, d)
            pairs.append((lq.stem, *dst))
    by_stem = {Path(rel).stem: TAGS[Path(rel).name] for _, rel, _ in PHOTOS if Path(rel).name in TAGS}
    for key, lq, _ in pairs:
        if key in by_stem:
            lq.with_suffix(".txt").write_text(by_stem[key] + "\n")
    return v1_root(work) / "photos" / "train", pairs


# ---------------------------------------------------------------- building one cell's model


def prune_budget(model: str) -> tuple[int, int]:
    """(parameter budget, blocks kept) for keeping round(PRUNE_KEEP * L) of the model's L blocks."""
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pruning.blocks import block_sizes

    sizes = block_sizes(load_model(model).transformer)
    keep = min(sizes.num_blocks, max(2, round(PRUNE_KEEP * sizes.num_blocks)))
    return sizes.fixed + keep * max(sizes.block), keep


def build_prune(cell: Cell, model: str, out: Path, train_dir: Path, args) -> dict:
    budget, keep = prune_budget(model)
    calib = ()
    if "fisher" in cell.flags:  # the paper's calibration: L_cal on degraded training crops, lambda_p 0 offline
        calib = ("--calib", str(train_dir), "--steps", str(args.calib_steps), "--crop", str(args.crop))
    cli(
        "prune", model, "-o", str(out), "--budget", str(budget), *cell.flags, *calib,
        "--lambda-p", "0", "--tag-cache", "off", "--overwrite", threads=args.threads,
    )  # fmt: skip
    report = json.loads((out / "prune_report.json").read_text())
    return dict(
        budget=budget,
        blocks_kept=keep,
        kept=report["kept"],
        params_before=report["params_before"],
        params_after=report["params_after"],
        macs_before=report.get("macs_before"),
        macs_after=report.get("macs_after"),
        calibration_steps=args.calib_steps if calib else 0,
    )


def build_train(cell: Cell, out: Path, work: Path, train_dir: Path, args) -> dict:
    prior = write_prior_dir(work / "prior_model", args.base)
    run = work / "runs" / cell.id.replace("/", "_")
    config = run / "train_config.json"
    if config.exists() and json.loads(config.read_text()).get("max_steps") != args.steps:
        log(f"{run} was another schedule: trained again from the start")  # --resume would mix schedules
        shutil.rmtree(run)
    cmd = sr_train_command(
        prior, train_dir, run, args.steps, args.seed, save_every=max(1, args.steps // 2),
        extra=("--validation-images", "0", "--resume", "auto", *cell.flags),
    )  # fmt: skip
    cli(*cmd[3:], threads=args.threads)
    final = run / f"checkpoint-{args.steps}"
    cli("merge-lora", str(final), "-o", str(out), "--ema", "--overwrite", threads=args.threads)
    logged = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    return dict(steps=args.steps, first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None)


# ---------------------------------------------------------------- evaluation


def evaluate(model_path: str, pairs, threads: int) -> dict:
    """Median Y-PSNR / SSIM of the model (no colour fix) and of bicubic, and the median per-image gain."""
    import torch

    from sanasr_cli.models.sanasr import load_model

    torch.set_num_threads(threads)
    rows = score_pairs(load_model(model_path), pairs, color_fixes=("none",))
    med = summarise(rows)
    return dict(
        psnr_y=med["nano_none_psnr_y"],
        ssim=med["nano_none_ssim"],
        gain_psnr_y=med["gain_none_psnr_y"],
        gain_ssim=med["gain_none_ssim"],
        bicubic_psnr_y=med["bicubic_psnr_y"],
        bicubic_ssim=med["bicubic_ssim"],
        images=rows,
    )


def cell_settings(cell: Cell, args) -> dict:
    """What a cell's result depends on beyond the run's model, base, seed and pairs: a finished cell is skipped
    on rerun only when these match (a rerun with another --steps retrains the training cells, never mixes)."""
    if cell.kind == "train":
        return dict(steps=args.steps)
    if "fisher" in cell.flags:
        return dict(calib_steps=args.calib_steps, crop=args.crop)
    return {}


def run_cell(cell: Cell, work: Path, train_dir: Path, pairs, args) -> dict:
    out = work / "models" / cell.id.replace("/", "_")
    load_before = os.getloadavg()[0]
    start = time.time()
    info: dict = {}
    if cell.kind == "prune":
        info = build_prune(cell, args.model, out, train_dir, args)
    elif cell.kind == "train":
        info = build_train(cell, out, work, train_dir, args)
    build_s = time.time() - start
    start = time.time()
    scored = evaluate(args.model if cell.kind == "reference" else str(out), pairs, args.threads)
    if cell.id == "reference/bicubic":
        scored.update(psnr_y=scored["bicubic_psnr_y"], ssim=scored["bicubic_ssim"], gain_psnr_y=0.0, gain_ssim=0.0)
        keep = ("image", "size", "bicubic")
        scored["images"] = [{k: v for k, v in r.items() if k.startswith(keep)} for r in scored["images"]]
    return dict(
        group=cell.group,
        cell=cell.name,
        flags=list(cell.flags),
        notes=cell.notes,
        settings=cell_settings(cell, args),
        **info,
        **scored,
        build_seconds=round(build_s, 1),
        eval_seconds=round(time.time() - start, 1),
        load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)],
    )


# ---------------------------------------------------------------- report


PAPER = {  # what the paper reports, as an ordering on PSNR (the metric measured here)
    "prune": (["fisher", "tail", "random"], "Table 6: Fisher (25.49 dB) > tail (24.79) > random (22.29)"),
    "objective": (["full", "no-cons", "no-align"], "Fig. 4b: full > without L_cons > without L_align"),
    "tau_g": (
        ["999", "900", "700", "500"],
        "Fig. 4c: PSNR rises with tau_g (a small tau_g under-restores; 999 is slightly above 900)",
    ),
    "prompt": (["tags+template", "template", "none"], "Fig. 4a: tags (DAPE) + template > template > weaker prompts"),
}


def group_rows(results: dict, group: str) -> list[tuple[str, dict, str | None]]:
    rows = []
    for cell in cells(results["seed"]):
        if cell.group != group:
            continue
        found = results["cells"].get(cell.same_as or cell.id)
        if found:
            rows.append((cell.name, found, cell.same_as))
    return rows


def verdict(results: dict, group: str) -> str:
    """The paper's ordering against the measured one. Cells are ranked by the median per-image Y-PSNR gain over
    bicubic (a paired difference: with four images, the median Y-PSNR of two cells can come from different
    images); random pruning counts as the mean of its seeds."""
    order, paper = PAPER[group]
    rows = group_rows(results, group)
    values = {name: r["gain_psnr_y"] for name, r, _ in rows}
    if group == "prune":
        randoms = [v for k, v in values.items() if k.startswith("random")]
        values = {k: v for k, v in values.items() if not k.startswith("random")}
        if randoms:
            values["random"] = round(statistics.mean(randoms), 3)
    if not all(k in values for k in order):
        return f"{paper}; not all cells measured yet."
    measured = sorted(values, key=values.get, reverse=True)
    shown = " > ".join(f"{k} ({values[k]:+.2f})" for k in measured)
    holds = all(values[a] > values[b] for a, b in zip(order, order[1:], strict=False))
    extra = ""
    if group == "prune":
        extra = "; Fisher is " + ("" if measured[0] == "fisher" else "not ") + "the best strategy here"
        kept = {name: tuple(r["kept"]) for name, r, _ in rows if "kept" in r}
        twins = [(a, b) for a in kept for b in kept if a < b and kept[a] == kept[b]]
        if twins:
            extra += " (" + ", ".join(f"{a} and {b} keep the same blocks" for a, b in twins) + ")"
    outcome = "holds" if holds else "does not hold"
    return f"{paper}. Measured (median Y-PSNR gain over bicubic, dB): {shown}: the paper's ordering {outcome}{extra}."


def markdown(results: dict) -> str:
    head = (
        "| group | cell | Y-PSNR | SSIM | gain over bicubic (dB / SSIM) | seconds (build + eval) | notes |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for group in ("reference", "prune", "objective", "tau_g", "prompt"):
        for name, r, same in group_rows(results, group):
            note = r.get("notes", "")
            if "kept" in r:
                note = f"kept blocks {r['kept']}, {r['params_after']:,} of {r['params_before']:,} params" + (
                    f", {r['calibration_steps']} calibration steps" if r["calibration_steps"] else ""
                )
            if same:
                note = f"same run as {same}"
            lines.append(
                f"| {group} | {name} | {r['psnr_y']:.2f} | {r['ssim']:.4f} | {r['gain_psnr_y']:+.2f} / "
                f"{r['gain_ssim']:+.4f} | {r['build_seconds']:.0f} + {r['eval_seconds']:.0f} | {note} |"
            )
    text = head + "\n".join(lines) + "\n\n"
    for group in ("prune", "objective", "tau_g", "prompt"):
        text += f"- **{group}**: {verdict(results, group)}\n"
    return text


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nano", help="the merged model to prune and to compare with (nano, tiny)")
    ap.add_argument("--base", default="shipped:nano", help="the base the retrained cells adapt")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "nano_ablations")
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "nano_ablations.json")
    ap.add_argument("--pairs", type=Path, default=None, help="a folder with lq/ and hq/ instead of the held-out photos")
    ap.add_argument("--cells", default="all", help="comma-separated cell ids or groups (references always run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200, help="training steps of every retrained cell")
    ap.add_argument("--calib-steps", type=int, default=200, help="Fisher calibration steps (the paper: K = 400)")
    ap.add_argument("--crop", type=int, default=64, help="calibration HQ crop (nano's training crop)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    pairs_name = str(args.pairs) if args.pairs else "nano held-out photos"
    settings = dict(model=args.model, base=args.base, seed=args.seed, pairs=pairs_name)
    if results.get("settings") not in (None, settings):
        raise SystemExit(f"{args.out} was made with other settings ({results['settings']}); use another --out")
    results.update(
        settings=settings,
        seed=args.seed,
        machine=f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), fp32, {args.threads} thread(s)",
        evaluation="nano_quality.py: Real-ESRGAN-degraded pairs (seed per file), x4, no colour fix, 8-bit, "
        "pyiqa Y-PSNR / SSIM, median over images",
        schedule=f"retrained cells: {args.steps} steps (shipped nano: 1000), otherwise nano's SR recipe",
    )
    results.setdefault("cells", {})
    train_dir, pairs = stage(work, args.pairs, args.seed)
    wanted = set(args.cells.split(","))
    for cell in cells(args.seed):
        done = results["cells"].get(cell.id)
        if cell.same_as or (done and done.get("settings") == cell_settings(cell, args)):
            continue
        if cell.group != "reference" and "all" not in wanted and not ({cell.id, cell.group} & wanted):
            continue
        log(f"cell {cell.id}")
        results["cells"][cell.id] = run_cell(cell, work, train_dir, pairs, args)
        results["markdown"] = markdown(results)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, results)
        r = results["cells"][cell.id]
        log(f"cell {cell.id}: {r['psnr_y']:.3f} dB, SSIM {r['ssim']:.4f} ({r['build_seconds']} + {r['eval_seconds']}s)")
    results["markdown"] = markdown(results)
    write_json(args.out, results)
    args.out.with_suffix(".md").write_text(results["markdown"])
    print(results["markdown"])
    return results


if __name__ == "__main__":
    main()
