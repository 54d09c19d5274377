"""The real model on one CPU (issue 36): SANA-600M and its transformer pruned to 0.35B, at 128 -> 512 px, run by
`sanasr upscale` four ways: PyTorch eager fp32, eager bf16, ONNX Runtime fp32 and ONNX Runtime int8.

No download is possible here, so the weights are random at real size (Gemma-2 2B text encoder, SANA-600M LinearDiT,
DC-AE f32c32), written once as a local diffusers-layout base folder (the hub's layout: what a user's
`--base` or Hugging Face cache holds), so that every command loads them from safetensors as it would load the real
ones, instead of drawing 3.7 GB of random numbers each time.

    python benchmarks/cpu_real_size.py --work WORK prepare              # base, pruned model, the four exports
    python benchmarks/cpu_real_size.py --work WORK run --rounds 3 --json benchmarks/results/cpu_real_size.json

`prepare` runs each step as its own process and records its seconds, peak RSS (`/usr/bin/time -v`) and exit code in
WORK/prepare.json (a step done before is skipped): the base folder, `sanasr prune --strategy tail` to 0.35B,
`sanasr export` of both models in fp32 and int8 (from the CLI, as a user runs it), and two cold/warm `upscale`s
(the prompt encoded with the text encoder alone and freed, then found in the disk cache). `run` then times every
backend in a process of its own, interleaved (each round runs them all, in an order rotated per round): whole-command
seconds, the per-image seconds the upscale report records (read, restore, colour fix, PNG write), peak RSS, and
the PSNR of each output against eager fp32's on the same photo. `text-encoder` times a first upscale with the text
encoder streamed from its files (the default on a CPU) against loaded whole, interleaved (`... text-encoder --rounds 2
--threads 1 --json ...`). Each command runs under `nice -n 10` and is stopped (recorded as such) if the machine's
available memory falls below --min-available GB. Prints and writes one JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's sanasr_cli (its commands run with `-m` from here too)
import sanasr_cli  # noqa: E402, F401 - before diffusers: it keeps bitsandbytes out of the process

PRESET = "sana-600m-512"
BACKENDS = ("eager-fp32", "eager-bf16", "ort-fp32", "ort-int8")
MODELS = ("full", "pruned")


def machine() -> dict:
    """The CPU this ran on (model name, flags that matter for bf16 / int8), its core count and memory."""
    info = {"platform": platform.platform(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = re.search(r"model name\s*:\s*(.*)", text).group(1)
        flags = set(re.search(r"flags\s*:\s*(.*)", text).group(1).split())
        info["flags"] = sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"})
        total = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1)
        info["memory_gib"] = round(int(total) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    import torch

    from sanasr_cli.models.precision import cpu_native_bf16

    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["native_bf16"] = cpu_native_bf16()
    return info


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def timed(cmd: list[str], log: Path, min_available: float, env: dict | None = None) -> dict:
    """Run `cmd` under nice and /usr/bin/time -v; stop it (its process group) if available memory falls below
    `min_available` GiB. Returns exit code, wall seconds, peak RSS (GiB) and whether it was stopped."""
    full = ["nice", "-n", "10", "/usr/bin/time", "-v", *cmd]
    start = time.perf_counter()
    stopped = {"low_memory": False}
    with open(log, "w") as out:
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def watch():
            while proc.poll() is None:
                if available_gib() < min_available:
                    stopped["low_memory"] = True
                    os.killpg(proc.pid, 9)
                    return
                time.sleep(0.5)

        threading.Thread(target=watch, daemon=True).start()
        code = proc.wait()
    seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {
        "exit_code": code,
        "seconds": round(seconds, 2),
        "peak_rss_gib": round(int(rss.group(1)) / 2**20, 3) if rss else None,
        "stopped_for_low_memory": stopped["low_memory"],
        "log": str(log),
    }


def sanasr(*args) -> list[str]:
    return [sys.executable, "-m", "sanasr_cli", *map(str, args)]


def write_base(base: Path) -> None:
    """A diffusers-layout base folder of seeded random weights at real size (each part built, saved, freed)."""
    import gc

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from sanasr_cli.models.presets import PRESETS, build_local_tokenizer
    from sanasr_cli.models.sanasr import (
        build_random_text_encoder,
        build_random_transformer,
        build_random_vae,
        random_text_config,
    )

    preset = PRESETS[PRESET]
    tmp = base.with_name(base.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = build_local_tokenizer()
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    FlowMatchEulerDiscreteScheduler(shift=preset.flow_shift).save_config(str(tmp / "scheduler"))
    for name, build in (
        ("transformer", lambda: build_random_transformer(preset, 0)),
        ("vae", lambda: build_random_vae(preset, 0)),
        ("text_encoder", lambda: build_random_text_encoder(random_text_config(preset, tokenizer), 0)),
    ):
        module = build()
        module.save_pretrained(str(tmp / name), safe_serialization=True)
        del module
        gc.collect()
    os.replace(tmp, base)
    print(f"wrote {base} (torch {torch.__version__})", file=sys.stderr)


def photo(work: Path) -> Path:
    """A real photo (examples/hq/cat.png, 256 px) at 128 x 128: the LQ input."""
    from PIL import Image

    folder = work / "lq"
    if not (folder / "cat.png").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(REPO / "examples" / "hq" / "cat.png").convert("RGB").resize((128, 128), Image.BICUBIC).save(
            folder / "cat.png"
        )
    return folder


def model_args(work: Path, model: str, backend: str) -> list[str]:
    base = ["--base", work / "base"]
    if backend.startswith("ort-"):
        return ["--model", work / "onnx" / f"{model}-{backend.split('-')[1]}"]
    source = PRESET if model == "full" else work / "pruned"
    return ["--model", source, *base, "--precision", backend.split("-")[1]]


def prepare(work: Path, min_available: float, env: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    record_path = work / "prepare.json"
    done = json.loads(record_path.read_text()) if record_path.is_file() else {}

    def step(name: str, cmd: list[str], ok) -> None:
        if name in done and done[name]["exit_code"] == 0 and ok():
            return
        print(f"prepare: {name} ...", file=sys.stderr, flush=True)
        done[name] = timed(cmd, logs / f"{name}.log", min_available, env)
        record_path.write_text(json.dumps(done, indent=2) + "\n")
        print(f"  {done[name]}", file=sys.stderr, flush=True)

    base = work / "base"
    step(
        "base",
        [sys.executable, __file__, "--work", str(work), "write-base"],
        lambda: (base / "text_encoder").is_dir(),
    )
    lq = photo(work)
    if done.get("upscale-cold-cache", {}).get("exit_code") != 0:  # the first upscale finds no prompt encoded
        shutil.rmtree(work / "prompt-cache", ignore_errors=True)
        shutil.rmtree(work / "cold", ignore_errors=True)
    for name, out in (("upscale-cold-cache", "cold"), ("upscale-warm-cache", "warm")):
        step(
            name,
            sanasr(
                "upscale",
                lq,
                "-o",
                work / out,
                "--model",
                PRESET,
                "--base",
                base,
                "--precision",
                "fp32",
                "--report",
                work / f"{out}.json",
                "--overwrite",
            ),  # fmt: skip
            lambda out=out: (work / f"{out}.json").is_file(),
        )
    step(
        "prune",
        sanasr("prune", PRESET, "--base", base, "--budget", "0.35B", "--strategy", "tail", "-o", work / "pruned"),
        lambda: (work / "pruned" / "sanasr.json").is_file(),
    )
    for model, source in (("full", [PRESET]), ("pruned", [work / "pruned"])):
        for quant in ("fp32", "int8"):
            out = work / "onnx" / f"{model}-{quant}"
            step(
                f"export-{model}-{quant}",
                sanasr(
                    "export",
                    *source,
                    "--base",
                    base,
                    "-o",
                    out,
                    "--overwrite",
                    *(["--quantize", "int8"] if quant == "int8" else []),
                ),  # fmt: skip
                lambda out=out: (out / "sanasr-onnx.json").is_file(),
            )
            if (out / "sanasr-onnx.json").is_file():
                done[f"export-{model}-{quant}"]["files_gib"] = round(
                    sum(p.stat().st_size for p in out.iterdir()) / 2**30, 3
                )
    record_path.write_text(json.dumps(done, indent=2) + "\n")
    return done


def psnr(a: Path, b: Path) -> float | None:
    import numpy as np
    from PIL import Image

    if not (a.is_file() and b.is_file()):
        return None
    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


def run(work: Path, rounds: int, configs: list[tuple[str, str]], min_available: float, env: dict, save=None) -> dict:
    """Every config once per round, rotated; `save(partial result)` after each run (a long benchmark stopped early
    keeps what it measured)."""
    lq = photo(work)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    runs: list[dict] = []
    for r in range(rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for model, backend in order:
            out = work / "out" / f"{model}-{backend}"
            report = work / "out" / f"{model}-{backend}.json"
            cmd = sanasr("upscale", lq, "-o", out, *model_args(work, model, backend), "--report", report, "--overwrite")
            print(f"round {r + 1}: {model} {backend} ...", file=sys.stderr, flush=True)
            rec = timed(cmd, logs / f"run-{r}-{model}-{backend}.log", min_available, env)
            rec.update(round=r + 1, model=model, backend=backend)
            if report.is_file():
                records = json.loads(report.read_text())["records"]
                rec["image_seconds"] = records[0].get("seconds")
                rec["status"] = records[0].get("status")
            runs.append(rec)
            if save is not None:
                save({"runs": runs, "summary": summarize(work, runs, configs), "rounds_asked": rounds})
            print(f"  {rec.get('image_seconds')} s image, {rec['seconds']} s command, {rec['peak_rss_gib']} GiB",
                  file=sys.stderr, flush=True)  # fmt: skip
    return {"runs": runs, "summary": summarize(work, runs, configs)}


def text_encoder_stage(work: Path, rounds: int, min_available: float, env: dict) -> dict:
    """A first upscale (no prompt in the encoding cache) of the full model in eager fp32, the text encoder streamed
    from its files (the default on a CPU, `models/streamed_encoder.py`) against loaded whole (the streaming threshold
    raised in that process), interleaved: whole-command seconds, peak RSS and the outputs' PSNR against each other."""
    lq = photo(work)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    threshold = {"streamed": None, "loaded": 1 << 62}
    runs: list[dict] = []
    for r in range(rounds):
        for mode in ("streamed", "loaded") if r % 2 == 0 else ("loaded", "streamed"):
            cache = work / f"prompt-cache-{mode}"
            shutil.rmtree(cache, ignore_errors=True)  # a first run: the prompt is encoded
            out = work / "out" / f"encoder-{mode}"
            args = ["upscale", lq, "-o", out, *model_args(work, "full", "eager-fp32"), "--overwrite"]
            set_threshold = "" if threshold[mode] is None else f"s.STREAM_ABOVE_BYTES = {threshold[mode]}; "
            code = (
                f"import sys, runpy; import sanasr_cli.models.streamed_encoder as s; {set_threshold}"
                "sys.argv = ['sanasr', *sys.argv[1:]]; runpy.run_module('sanasr_cli', run_name='__main__')"
            )
            print(f"round {r + 1}: text encoder {mode} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, "-c", code, *map(str, args)]
            rec = timed(cmd, logs / f"encoder-{r}-{mode}.log", min_available, dict(env, SANASR_PROMPT_CACHE=str(cache)))
            rec.update(round=r + 1, mode=mode)
            runs.append(rec)
            print(f"  {rec['seconds']} s command, {rec['peak_rss_gib']} GiB", file=sys.stderr, flush=True)
    summary = {}
    for mode in threshold:
        mine = [x for x in runs if x["mode"] == mode and x["exit_code"] == 0]
        if mine:
            summary[mode] = {
                "runs": len(mine),
                "command_seconds_median": statistics.median(x["seconds"] for x in mine),
                "peak_rss_gib_max": max(x["peak_rss_gib"] for x in mine),
            }
    streamed, loaded = (work / "out" / f"encoder-{mode}" / "cat.png" for mode in ("streamed", "loaded"))
    summary["psnr_streamed_vs_loaded_db"] = psnr(streamed, loaded)
    return {"runs": runs, "summary": summary}


def summarize(work: Path, runs: list[dict], configs) -> list[dict]:
    rows = []
    for model, backend in configs:
        mine = [r for r in runs if r["model"] == model and r["backend"] == backend and r["exit_code"] == 0]
        row = {"model": model, "backend": backend, "runs": len(mine)}
        if mine:
            row["image_seconds_median"] = statistics.median(r["image_seconds"] for r in mine)
            row["command_seconds_median"] = statistics.median(r["seconds"] for r in mine)
            row["peak_rss_gib_max"] = max(r["peak_rss_gib"] for r in mine)
        reference = work / "out" / f"{model}-eager-fp32" / "cat.png"
        row["psnr_vs_eager_fp32_db"] = psnr(work / "out" / f"{model}-{backend}" / "cat.png", reference)
        rows.append(row)
    # the speed ratios per round (backends of one round ran back to back, so the machine's load is alike)
    for row in rows:
        ratios = []
        for r in {x["round"] for x in runs}:
            ref = [x for x in runs if x["round"] == r and x["model"] == row["model"] and x["backend"] == "eager-fp32"]
            me = [x for x in runs if x["round"] == r and x["model"] == row["model"] and x["backend"] == row["backend"]]
            if ref and me and ref[0].get("image_seconds") and me[0].get("image_seconds"):
                ratios.append(ref[0]["image_seconds"] / me[0]["image_seconds"])
        if ratios:
            row["speedup_vs_eager_fp32_median"] = round(statistics.median(ratios), 3)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("stage", choices=("prepare", "run", "write-base", "text-encoder"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--min-available", type=float, default=1.5, help="GiB of available memory below which a run stops")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    work = args.work.resolve()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), SANASR_PROMPT_CACHE=str(work / "prompt-cache"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    if args.stage == "write-base":
        write_base(work / "base")
        return 0
    doc = {"machine": machine(), "threads": args.threads, "preset": PRESET, "input": "128 x 128 -> 512 x 512"}

    def save(partial: dict) -> None:
        if args.json:
            args.json.write_text(json.dumps({**doc, **partial}, indent=2) + "\n")

    if args.stage == "prepare":
        doc["prepare"] = prepare(work, args.min_available, env)
    elif args.stage == "text-encoder":
        doc["text_encoder_stage"] = text_encoder_stage(work, args.rounds, args.min_available, env)
    else:
        doc["prepare"] = json.loads((work / "prepare.json").read_text()) if (work / "prepare.json").is_file() else {}
        configs = [(m, b) for m in args.models.split(",") for b in args.backends.split(",")]
        doc.update(run(work, args.rounds, configs, args.min_available, env, save))
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
