"""PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8 on the same inputs (`sanasr export`, docs/export.md).

    python benchmarks/onnx_backends.py                                 # nano, 64 px LQ, 2 threads
    python benchmarks/onnx_backends.py --model sana-600m-512 --random-weights --sizes 128 --rounds 3

End to end through `upscale_tensor` (the host code every backend shares: bicubic, padding, the stages, the
wavelet colour fix), whole image. The backends run interleaved, each round in a rotated order, so that a machine
whose load changes during the run slows them alike; each round gives a ratio (PyTorch seconds / backend
seconds) and the report is the median of the per-round ratios. --quality also scores the three held-out crops
of tests/data/nano_heldout (Y-PSNR, no colour fix, as benchmarks/nano_quality.py) for each backend.
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


def exported(model, name: str, folder: Path, quantize: str) -> Path:
    from sanasr_cli.export.contract import is_onnx_dir
    from sanasr_cli.export.onnx_export import export_onnx

    if not is_onnx_dir(folder):
        start = time.perf_counter()
        export_onnx(model, folder, source=name, quantize=quantize, overwrite=True)
        print(f"exported {folder} ({quantize}) in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def time_backends(backends: dict, sizes: list[int], rounds: int, prompt: str) -> dict:
    from sanasr_cli.pipeline.upscale import upscale_tensor

    names = list(backends)
    out = {}
    for side in sizes:
        torch.manual_seed(side)
        lq = torch.rand(3, side, side)
        for m in backends.values():  # warm-up (allocators, ORT's first-run graph work)
            upscale_tensor(m, lq, prompt, tile="none")
        seconds = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                start = time.perf_counter()
                with torch.no_grad():
                    upscale_tensor(backends[n], lq, prompt, tile="none")
                seconds[n].append(time.perf_counter() - start)
        ratios = {
            n: round(statistics.median(t / b for t, b in zip(seconds["pytorch"], seconds[n], strict=True)), 3)
            for n in names
            if n != "pytorch"
        }
        out[f"{side}->{4 * side}"] = {
            "median_seconds": {n: round(statistics.median(s), 4) for n, s in seconds.items()},
            "speedup_vs_pytorch": ratios,
            "rounds": rounds,
        }
        print(side, out[f"{side}->{4 * side}"], flush=True)
    return out


def quality(backends: dict) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from nano_quality import score_pairs

    from tests.helpers import NANO_HELDOUT_PAIRS

    pairs = [(p.stem, p, NANO_HELDOUT_PAIRS / "hq" / p.name) for p in sorted((NANO_HELDOUT_PAIRS / "lq").glob("*.png"))]
    out = {}
    for name, model in backends.items():
        rows = score_pairs(model, pairs, color_fixes=("none",))
        out[name] = {
            "median_psnr_y": round(statistics.median(r["nano_none_psnr_y"] for r in rows), 3),
            "images": {r["image"]: r["nano_none_psnr_y"] for r in rows},
        }
        print(name, out[name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nano")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--sizes", default="64", help="LQ sides, comma-separated (output: 4x)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("runs/onnx_backends"))
    ap.add_argument("--quality", action="store_true", help="also Y-PSNR on the held-out crops (nano)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "onnx_backends.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sanasr_cli.models.onnx_backend import load_onnx_model
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.prompts.template import build_prompt

    model = load_model(args.model, random_weights=args.random_weights)
    stem = args.work / args.model.replace("/", "_")
    backends = {"pytorch": model}
    for quantize in ("none", "int8"):
        folder = exported(model, args.model, Path(f"{stem}-{quantize}"), quantize)
        backends[f"ort_{'fp32' if quantize == 'none' else quantize}"] = load_onnx_model(folder, args.threads)
    sizes = {
        n: (Path(f"{stem}-{q}") / "model.onnx").stat().st_size for n, q in (("ort_fp32", "none"), ("ort_int8", "int8"))
    }
    prompt = build_prompt([], model.description.prompt.template)
    result = {
        "model": args.model,
        "random_weights": args.random_weights,
        "threads": args.threads,
        "machine": "2-core x86-64 CPU shared with other jobs (loaded): ratios are what one interleaved run measured",
        "model_onnx_bytes": sizes,
        "timing": time_backends(backends, [int(s) for s in args.sizes.split(",")], args.rounds, prompt),
    }
    if args.quality:
        result["quality"] = quality(backends)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
