"""`sanasr bench --compare-backends`: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8 on the same inputs.

How each number is obtained (and stated in the report):
- The model is exported twice (`sanasr export`'s code: fp32, and `--quantize int8`) into a work folder; an export
  already there is reused when its contract names the same source weights (sha256) and quantization.
- **seconds**: end to end through `upscale_tensor` (the host code every backend shares: bicubic, padding, the
  stages, the wavelet colour fix), whole image, LQ side = size / 4, on the CPU in float32, `threads` intra-op
  threads for torch and for ONNX Runtime alike. After `warmup` untimed calls of each backend, each of `rounds`
  rounds times every backend once, in an order rotated per round (interleaved), so that a shared machine whose
  load changes slows all of them alike. **speedup_vs_pytorch** is the median of the per-round ratios
  (PyTorch seconds / backend seconds), not a ratio of medians.
- **memory_mib**: each backend alone in a fresh process (the same interpreter; torch is imported by all three, as
  the host code runs on it) loads and runs one call at the largest size: its resident memory after loading and the
  process's peak (VmHWM). In the timing process all three are resident at once, and both
  allocators keep what they once took, so a peak there would say little.
  **weights_mib**: the PyTorch modules' parameters and buffers; for ONNX Runtime the stage files' size.
  **model_onnx_mib**: the size of the deployable `model.onnx`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sanasr_cli.measure import MIB

BACKENDS = ("pytorch", "ort_fp32", "ort_int8")
QUANTIZE_OF = {"ort_fp32": "none", "ort_int8": "int8"}


@dataclass
class BackendOptions:
    sizes: tuple[int, ...] = (256,)  # output sides (square); the LQ is size / 4
    rounds: int = 5
    warmup: int = 1
    threads: int | None = None  # None: torch's current number
    work: Path | None = None  # where the exports are written (and reused); None: a temporary folder
    memory: bool = True  # peak memory of each backend, each in a process of its own
    load: dict = field(default_factory=dict)  # how the PyTorch model is loaded again there (load_model's kwargs)


def ensure_export(model, source: str, folder: Path, quantize: str) -> Path:
    """`folder` holding `model` exported with `quantize`: reused when its contract names the same weights and
    quantization, else (re-)exported there (an earlier export is replaced; any other folder is refused)."""
    from sanasr_cli.export.contract import is_onnx_dir, load_contract
    from sanasr_cli.export.onnx_export import export_onnx, weights_sha256

    if is_onnx_dir(folder):
        contract = load_contract(folder)
        if (
            contract["source_weights_sha256"] == weights_sha256(model)
            and contract["quantization"]["mode"] == quantize
            and not contract["prompt"].get("input")
        ):
            return folder
    export_onnx(model, folder, source=source, quantize=quantize, overwrite=True)
    return folder


def child_peak(kind: str, target: str, load: dict, side: int, threads: int) -> dict:
    """In a fresh process: load one backend (`pytorch`: the model `target` as `load` says; else the ONNX folder
    `target`), run one upscale of a side x side LQ, and report the process's resident memory (MiB) after loading
    and its peak (VmHWM: getrusage's ru_maxrss would start at the forking parent's, which Linux keeps over exec)."""
    from sanasr_cli.models.onnx_backend import load_onnx_model
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pipeline.upscale import upscale_tensor
    from sanasr_cli.prompts.template import build_prompt

    torch.set_num_threads(threads)
    model = load_model(target, **load) if kind == "pytorch" else load_onnx_model(target, threads)
    loaded = _rss()
    torch.manual_seed(side)
    with torch.no_grad():
        upscale_tensor(
            model, torch.rand(3, side, side), build_prompt([], model.description.prompt.template), tile="none"
        )
    peak = _rss("VmHWM")
    return {
        "loaded_rss_mib": None if loaded is None else round(loaded / MIB, 1),
        "peak_rss_mib": None if peak is None else round(peak / MIB, 1),
    }


def _rss(field: str = "VmRSS") -> int | None:
    """This process's resident set size (VmRSS) or its peak (VmHWM) in bytes, from /proc/self/status (Linux);
    None where there is none."""
    try:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith(field + ":"))
        return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def peak_in_child(kind: str, target: str, load: dict, side: int, threads: int) -> dict | None:
    """child_peak in a subprocess (this interpreter); None when it fails."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys; from sanasr_cli.evaluation.backends import child_peak; "
        "print('PEAK ' + json.dumps(child_peak(*json.loads(sys.argv[1]))))"
    )
    args = json.dumps([kind, str(target), load, side, threads])
    proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK ")]
    return json.loads(lines[-1][5:]) if proc.returncode == 0 and lines else None


def time_backends(
    backends: dict, lq: torch.Tensor, prompt: str, rounds: int, warmup: int, step: Callable[[str], None]
) -> dict[str, list[float]]:
    """Seconds of each backend's upscale_tensor(lq) in `rounds` interleaved rounds (order rotated per round)."""
    from sanasr_cli.pipeline.upscale import upscale_tensor

    names = list(backends)

    def call(name: str) -> None:
        with torch.no_grad():
            upscale_tensor(backends[name], lq, prompt, tile="none")

    for _ in range(warmup):  # allocators, ORT's first-run work
        for n in names:
            call(n)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        step(f"round {r + 1}/{rounds} at {lq.shape[-1]} px LQ ({' / '.join(names)} interleaved)")
        for n in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            call(n)
            seconds[n].append(time.perf_counter() - start)
    return seconds


def _size_report(backends: dict, side: int, prompt: str, options: BackendOptions, step, targets: dict) -> dict:
    torch.manual_seed(side)
    lq = torch.rand(3, side // 4, side // 4)
    seconds = time_backends(backends, lq, prompt, options.rounds, options.warmup, step)
    memory = {}
    if options.memory and side == max(options.sizes):  # at the largest size only: a process per backend
        for name, target in targets.items():
            step(f"peak memory of {name} at {side // 4} px LQ (a process of its own)")
            memory[name] = peak_in_child(name, target, options.load, side // 4, options.threads or 1)
    ref = seconds["pytorch"]
    return {
        "size": side,
        "lq_size": side // 4,
        "median_seconds": {n: round(statistics.median(s), 4) for n, s in seconds.items()},
        "speedup_vs_pytorch": {
            n: round(statistics.median(a / b for a, b in zip(ref, s, strict=True)), 3)
            for n, s in seconds.items()
            if n != "pytorch"
        },
        "memory_mib": memory,
        "seconds": {n: [round(t, 4) for t in s] for n, s in seconds.items()},
    }


def compare_backends(model, source: str, options: BackendOptions, on_step: Callable[[str], None] | None = None) -> dict:
    """Export `model` (a loaded SanaSR, fp32 on the CPU) to fp32 and int8 ONNX, time the three backends at
    every size (see the module docstring for what each number is) and return the JSON-ready report."""
    from sanasr_cli.export.onnx_export import lq_multiple_of
    from sanasr_cli.measure import weight_bytes
    from sanasr_cli.models.onnx_backend import load_onnx_model
    from sanasr_cli.prompts.template import build_prompt

    step = on_step or (lambda _msg: None)
    k = 4 * lq_multiple_of(model)
    bad = [s for s in options.sizes if s % 4]
    if bad:
        raise ValueError(f"--size {bad[0]} is not a multiple of 4 (the LQ side is size / 4)")
    threads = options.threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    tmp = None if options.work is not None else tempfile.TemporaryDirectory(prefix="sanasr-backends-")
    work = Path(options.work if options.work is not None else tmp.name)
    try:
        backends, sizes = {"pytorch": model}, {}
        modules = [m for m in (model.transformer, model.codec.vae, model.codec.lq_encoder, model.codec.light_decoder)
                   if m is not None]  # fmt: skip
        weights = {"pytorch": round(weight_bytes(modules) / MIB, 1)}
        for name, quantize in QUANTIZE_OF.items():
            step(f"exporting {source} ({quantize}) to {work / name} (reused when already there)")
            folder = ensure_export(model, source, work / name, quantize)
            backends[name] = load_onnx_model(folder, threads)
            contract = backends[name].contract
            sizes[name] = round(contract["files"]["model.onnx"] / MIB, 2)
            weights[name] = round(sum(contract["files"][f] for f in contract["stages"].values()) / MIB, 1)
        prompt = build_prompt([], model.description.prompt.template)
        targets = {"pytorch": source, **{n: str(work / n) for n in QUANTIZE_OF}}
        per_size = [_size_report(backends, side, prompt, options, step, targets) for side in options.sizes]
    finally:
        torch.set_num_threads(previous)
        if tmp is not None:
            tmp.cleanup()
    return {
        "model": source,
        "backends": list(BACKENDS),
        "threads": threads,
        "device": "cpu (float32; ONNX Runtime's CPUExecutionProvider)",
        "rounds": options.rounds,
        "warmup": options.warmup,
        "model_onnx_mib": sizes,
        "weights_mib": weights,
        "sizes_note": f"output sides; the LQ is size / 4 (sides the graphs take directly: multiples of {k})",
        "per_size": per_size,
        "notes": {
            "seconds": "end to end through upscale_tensor (bicubic, padding, the stages, the wavelet colour fix), "
            "whole image; median of the rounds",
            "speedup_vs_pytorch": "median of per-round ratios (PyTorch seconds / backend seconds), rounds "
            "interleaved in rotated order in one process",
            "memory_mib": "at the largest size, each backend alone in a fresh process (torch imported by all: the "
            "host code): RSS after loading, and the process's peak RSS over loading and one call (VmHWM)",
            "weights_mib": "PyTorch: parameters and buffers of the modules run; ONNX: the stage files' size",
        },
    }
