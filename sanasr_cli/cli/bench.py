"""`sanasr bench`: parameters, MACs, latency and peak memory per part of the pipeline, optionally side by side
with an OSEDiff-shaped (SD-2.1) one-step pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from sanasr_cli.cli import options as opt
from sanasr_cli.cli.common import (
    EXIT_USAGE,
    check_report_paths,
    console,
    fail,
    quiet_libraries,
    resolve_device,
    resolve_precision,
)

COMPARABLE = ("osediff", "full-prompt", "full-vae", "decoder-full")  # as evaluation.bench.COMPARABLE (light: --help)


def _fmt(x, scale=1.0) -> str:
    if x is None:
        return "-"
    v = x / scale
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"


def _print_report(report: dict) -> None:
    out = type(console)(soft_wrap=True, highlight=False)
    table = Table(
        title=f"{report['size']}x{report['size']}, batch {report['batch_size']}, {report['device']}, "
        f"{report['precision']}",
        title_justify="left",
    )
    for col in ("pipeline", "part", "params (M)", "GMACs", "latency (ms)", "peak (MiB)"):
        label = col in ("pipeline", "part")
        table.add_column(col, justify="left" if label else "right", no_wrap=label)

    def rows(name, r):
        for part, e in [*r["parts"].items(), ("end_to_end", r["end_to_end"])]:
            table.add_row(
                name,
                part,
                _fmt(e["params"], 1e6),
                _fmt(e["macs"], 1e9),
                _fmt(e["latency_ms"]),
                _fmt(e["peak_memory_mb"]),
                end_section=part == "end_to_end",
            )

    rows("sanasr", report)
    for name, sub in report["compare"].items():
        rows(name, sub)
        for part, ratio in sub["ratios"].items():
            table.add_row(
                f"{name}/ours",
                part,
                _fmt(ratio["params"]),
                _fmt(ratio["macs"]),
                _fmt(ratio["latency_ms"]),
                _fmt(ratio["peak_memory_mb"]),
                end_section=part == "end_to_end",
            )
    out.print(table)
    for name, e in report.get("once", {}).items():
        out.print(
            f"once per process: {name} {_fmt(e['macs'], 1e9)} GMACs, latency {_fmt(e['latency_ms'])} ms "
            "(not in the per-prompt text_encoder line)."
        )
    if "tagger" in report:
        t = report["tagger"]
        out.print(
            f"tagger ({t['name']}, {t['model']}): {_fmt(t['params'], 1e6)} M params, {_fmt(t['macs'], 1e9)} GMACs, "
            f"latency {_fmt(t['latency_ms'])} ms; {t['note']}."
        )
    notes = report["notes"]
    for name, sub in report["compare"].items():
        out.print(f"{name}: {sub['pipeline']}.")
    out.print(f"MACs: {notes['macs']}. end_to_end: {notes['end_to_end']}.")
    out.print(f"latency (sanasr): {notes['latency']}; peak memory: {notes['peak_memory_mb']}.")
    for name, sub in report["compare"].items():
        out.print(f"latency ({name}): {sub['notes']['latency']}.")
    if report["compare"]:
        out.print(f"ratios: {notes['ratios']}.")
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")


MODEL = typer.Option(
    "sana-600m-512",
    "--model",
    "-m",
    help="A preset (sana-600m-512, tiny) or a model "
    "directory (a pruned transformer is measured as it is; a LoRA adapter unmerged).",
)
RANDOM_WEIGHTS = typer.Option(
    False,
    "--random-weights",
    help="Random weights for the latency runs (no "
    "download; the cost does not depend on the values). MACs never need weights.",
)
SIZES = typer.Option(
    [512], "--size", help="Output size (square, px); repeat for a sweep: --size 512 --size 1024 --size 2048."
)
BATCH_SIZE = typer.Option(1, "--batch-size", min=1, help="Images per run.")
COMPARE = typer.Option(
    [],
    "--compare",
    help="Also measure another pipeline in the same run and report ratios (latency: median of per-round "
    "ratios, timed interleaved): osediff (SD-2.1 UNet + SD VAE, random weights), full-prompt (the full-length "
    "padded prompt encode and all text positions, i.e. before the prefix reuse), full-vae (the same model with "
    "the teacher DC-AE instead of its distilled students), decoder-full (the full DC-AE decoder beside "
    "--vae-decoder lite), or another model by name (e.g. sana-600m-512). Repeatable.",
)
LATENCY = typer.Option(
    "auto", "--latency", help="auto (on CUDA, or on CPU for pipelines under 5 GMACs per image), on, off."
)
WARMUP = typer.Option(2, "--warmup", min=0, help="Untimed runs before timing.")
REPEATS = typer.Option(5, "--repeats", min=1, help="Timed runs; the median is reported.")
JSON_OUT = typer.Option(
    None,
    "--json",
    help="Write the measurements as JSON to this file ('-': stdout); "
    "one object per size in a list when several sizes are given.",
)
PLOT = typer.Option(None, "--plot", help="Write a PNG of end-to-end MACs and latency against size.")
TAGGER = typer.Option("none", "--tagger", help="Also report the prompt tagger's cost as its own line: none or clip.")
TAGGER_MODEL = typer.Option(
    None, "--tagger-model", help="CLIP hub id or local folder for --tagger clip (default: ViT-B/32)."
)
COMPARE_BACKENDS = typer.Option(
    False,
    "--compare-backends",
    help="Instead of the per-part report: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8 end to end on "
    "the CPU (the model exported both ways first), --repeats interleaved rounds per --size, speed-ups and peak "
    "memory. Needs the ONNX extra.",
)
THREADS = typer.Option(
    None, "--threads", min=1, help="--compare-backends: intra-op threads of torch and ONNX Runtime (default torch's)."
)
EXPORT_DIR = typer.Option(
    None,
    "--export-dir",
    help="--compare-backends: keep the exports here (EXPORT_DIR/ort_fp32, ort_int8) and reuse them when they "
    "hold the same weights (default: a temporary folder, removed afterwards).",
)


def bench(
    model: str = MODEL,
    random_weights: bool = RANDOM_WEIGHTS,
    sizes: list[int] = SIZES,
    batch_size: int = BATCH_SIZE,
    compare: list[str] = COMPARE,
    latency: str = LATENCY,
    warmup: int = WARMUP,
    repeats: int = REPEATS,
    json_out: str = JSON_OUT,
    plot: Path = PLOT,
    device: str = opt.device("auto, cpu, cuda, cuda:N (for latency and memory)."),
    precision: str = opt.PRECISION,
    base: str = opt.base("Hub id or local folder of the pretrained SANA base (latency with real weights)."),
    seed: int = opt.seed("Seed of random weights."),
    tagger: str = TAGGER,
    tagger_model: str = TAGGER_MODEL,
    full_vae: bool = opt.FULL_VAE,
    vae_decoder: str = opt.VAE_DECODER,
    compare_backends: bool = COMPARE_BACKENDS,
    threads: int = THREADS,
    export_dir: Path = EXPORT_DIR,
):
    """Measure parameters, MACs, latency and peak memory of each part (VAE encode, text encoder, transformer,
    VAE decode) and end to end.

    \b
    sanasr bench --random-weights                          SANA-600M at 512x512 (latency on CUDA only)
    sanasr bench --random-weights --size 512 --size 1024 --size 2048 --compare osediff --plot cost.png
    sanasr bench --model pruned_dir/ --random-weights --json cost.json
    sanasr bench --model tiny --latency on                         small enough to time on a CPU
    sanasr bench --model nano --compare-backends --size 256 --threads 2    PyTorch vs ONNX Runtime fp32 / int8

    MACs = FLOPs/2 counted by torch's FlopCounterMode on the meta device (no weights or memory needed, fused
    attention counted). end_to_end = encode + transformer + decode; the text encoder is its own part.
    Latency is the median of --repeats runs after --warmup runs (CUDA-synchronised); the output says what
    was not measured.
    """
    from sanasr_cli.evaluation.bench import BenchOptions

    _check_flags(compare, latency, sizes, json_out, plot)
    if compare_backends:
        _check_backend_flags(compare, plot, device, precision, tagger)
        from sanasr_cli.evaluation.backends import BackendOptions

        load = {"random_weights": random_weights, "seed": seed, "base": base, "full_vae": full_vae}
        options = BackendOptions(tuple(sizes), repeats, warmup, threads, export_dir, load=load)
        return _write_backends(_compare_backends(model, options, (base, random_weights, seed, full_vae)), json_out)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    quiet_libraries()
    options = BenchOptions(
        sizes=tuple(sizes), batch_size=batch_size, device=str(dev), dtype=dtype, latency=latency, warmup=warmup,
        repeats=repeats, compare=tuple(dict.fromkeys(compare)), random_weights=random_weights, base=base, seed=seed,
        tagger=tagger, tagger_model=tagger_model, full_vae=full_vae, vae_decoder=vae_decoder,
    )  # fmt: skip
    _write(_measure(model, options), json_out, plot)


def _check_flags(compare, latency, sizes, json_out, plot) -> None:
    from sanasr_cli.evaluation.bench import comparable_models

    known = (*COMPARABLE, *comparable_models())
    unknown = [c for c in compare if c not in known]
    if unknown:
        raise fail(f"unknown --compare {', '.join(unknown)}; known: {', '.join(known)}", EXIT_USAGE)
    if latency not in ("auto", "on", "off"):
        raise fail(f"--latency must be auto, on or off (got '{latency}')", EXIT_USAGE)
    bad = [s for s in sizes if s < 32]
    if bad:
        raise fail(f"--size must be at least 32 (got {', '.join(map(str, bad))})", EXIT_USAGE)
    check_report_paths(("--json", json_out), ("--plot", plot))  # before the (long) measurement, not after


def _check_backend_flags(compare, plot, device: str, precision: str, tagger: str) -> None:
    """--compare-backends runs on the CPU in float32, alone: the flags of the per-part report are refused."""
    other = [f for f, given in (("--compare", compare), ("--plot", plot), ("--tagger", tagger != "none")) if given]
    if other:
        raise fail(f"--compare-backends does not take {', '.join(other)} (it is its own report)", EXIT_USAGE)
    if device not in ("auto", "cpu") or precision not in ("auto", "fp32"):
        raise fail("--compare-backends measures on the CPU in fp32 (drop --device / --precision)", EXIT_USAGE)


def _compare_backends(spec: str, options, load: tuple) -> dict:
    import torch

    from sanasr_cli.cli.common import load_model_or_fail
    from sanasr_cli.errors import SanaSRError, UnsafeOutputError
    from sanasr_cli.evaluation.backends import compare_backends

    base, random_weights, seed, full_vae = load
    model = load_model_or_fail(
        spec, torch.device("cpu"), torch.float32, base=base, seed=seed, status=f"loading {spec} ...",
        full_vae=full_vae, random_weights=random_weights,
    )  # fmt: skip
    if not hasattr(model, "transformer"):
        raise fail(f"--compare-backends exports the model itself: {spec} is already an ONNX export", EXIT_USAGE)
    try:
        return compare_backends(
            model, spec, options, on_step=lambda m: console.print(f"bench: {m} ...", highlight=False)
        )
    except (ValueError, UnsafeOutputError) as e:  # a bad --size; an --export-dir holding other files
        raise fail(str(e), EXIT_USAGE) from None
    except SanaSRError as e:  # e.g. the ONNX extra not installed
        raise fail(str(e)) from None


def _write_backends(report: dict, json_out) -> None:
    """The speed-up table (unless JSON goes to stdout) and the JSON."""
    if json_out != "-":
        out = type(console)(soft_wrap=True, highlight=False)
        table = Table(
            title=f"{report['model']}, {report['threads']} thread(s), {report['device']}", title_justify="left"
        )
        for col in ("size", "backend", "median s", "speed-up", "peak MiB", "onnx MiB"):
            table.add_column(col, justify="left" if col in ("size", "backend") else "right", min_width=8)
        for entry in report["per_size"]:
            for name in report["backends"]:
                peak = (entry["memory_mib"].get(name) or {}).get("peak_rss_mib")
                table.add_row(
                    f"{entry['lq_size']}->{entry['size']}", name, _fmt(entry["median_seconds"][name]),
                    _fmt(entry["speedup_vs_pytorch"].get(name, 1.0)), _fmt(peak),
                    _fmt(report["model_onnx_mib"].get(name)), end_section=name == report["backends"][-1],
                )  # fmt: skip
        out.print(table)
        for key, note in report["notes"].items():
            out.print(f"{key}: {note}.")
    if json_out == "-":
        print(json.dumps(report, indent=2))
    elif json_out:
        from sanasr_cli.evaluation.report import write_json

        write_json(json_out, report)
        console.print(f"JSON written to {json_out}")


def _measure(model, options) -> list[dict]:
    """run_bench with a plain line per step on stderr (visible in logs and pipes, not only on a TTY)."""
    from sanasr_cli.errors import MissingWeightsError, ModelDirError
    from sanasr_cli.evaluation.bench import run_bench

    def progress(msg: str) -> None:
        console.print(f"bench: {msg} ...", highlight=False)

    try:
        return run_bench(model, options, on_step=progress)
    except ModelDirError as e:
        raise fail(str(e), EXIT_USAGE) from None
    except ValueError as e:
        raise fail(str(e), EXIT_USAGE) from None
    except MissingWeightsError as e:
        raise fail(f"{e} (or pass --random-weights: the cost does not depend on the weights)") from None


def _write(reports: list[dict], json_out, plot) -> None:
    """The tables (unless JSON goes to stdout), the JSON and the plot."""
    if json_out != "-":
        for r in reports:
            _print_report(r)
    data = reports[0] if len(reports) == 1 else reports
    if json_out == "-":
        print(json.dumps(data, indent=2))
    elif json_out:
        from sanasr_cli.evaluation.report import write_json

        write_json(json_out, data)
        console.print(f"JSON written to {json_out}")
    if plot is not None:
        from sanasr_cli.evaluation.bench_plot import plot_reports

        plot_reports(reports, plot)
        console.print(f"plot written to {plot}")


def register(app: typer.Typer) -> None:
    from sanasr_cli.cli.common import one_line_errors

    app.command("bench")(one_line_errors(bench))
