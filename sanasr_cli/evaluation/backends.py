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
- **peak_extra_mib**: the process's resident memory (RSS, sampled every 2 ms) during one more call of that backend,
  above the RSS just before it: activations and workspace (every backend's weights are resident throughout).
  **weights_mib**: the PyTorch modules' parameters and buffers; for ONNX Runtime the stage files' size.
  **model_onnx_mib**: the size of the deployable `model.onnx`.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


class PeakRSS:
    """The process's peak resident set size while the block runs, sampled every 2 ms from /proc (Linux);
    `peak` stays None where /proc/self/statm does not exist."""

    def __init__(self):
        self.peak: int | None = None
        self.before: int | None = None

    @staticmethod
    def rss() -> int | None:
        import os

        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak or 0, self.rss() or 0)

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = self.rss()
        self._stop = threading.Event()
        if self.before is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.before is not None:
            self._thread.join()
            self.peak = max(self.peak or 0, self.rss() or 0)

    @property
    def extra(self) -> int | None:
        return None if self.before is None else self.peak - self.before


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


def _size_report(backends: dict, side: int, prompt: str, options: BackendOptions, step) -> dict:
    from sanasr_cli.pipeline.upscale import upscale_tensor

    torch.manual_seed(side)
    lq = torch.rand(3, side // 4, side // 4)
    seconds = time_backends(backends, lq, prompt, options.rounds, options.warmup, step)
    peaks = {}
    for name, model in backends.items():
        with PeakRSS() as peak, torch.no_grad():
            upscale_tensor(model, lq, prompt, tile="none")
        peaks[name] = None if peak.extra is None else round(peak.extra / MIB, 1)
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
        "peak_extra_mib": peaks,
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
        per_size = [_size_report(backends, side, prompt, options, step) for side in options.sizes]
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
            "peak_extra_mib": "peak RSS during one call above the RSS before it (sampled every 2 ms; every "
            "backend's weights resident throughout)",
            "weights_mib": "PyTorch: parameters and buffers of the modules run; ONNX: the stage files' size",
        },
    }
