"""nano exported to ONNX, fp32 and int8: Y-PSNR of each backend against PyTorch's on the same held-out pairs.

    python benchmarks/onnx_quality.py --pairs WORK/eval_pairs       # nano v2's 200 evaluation pairs (the recipe's)
    python benchmarks/onnx_quality.py                                # the 8 CI pairs of tests/data/nano_heldout

nano is exported with `sanasr export`'s code (fp32, and `--quantize int8`: the contract records the choice) into
--work (reused when it holds the same weights), then PyTorch eager, ONNX Runtime fp32 and ONNX Runtime int8
upscale every LQ of PAIRS/lq through `upscale_tensor` (the host code all backends share), with no colour fix
(the paper's pipeline) and with upscale's default wavelet fix; the outputs are quantised to 8 bits and scored
with pyiqa's Y-PSNR and SSIM as `sanasr eval` builds them (benchmarks/nano_quality.py's score_pairs). Reported:
each backend's median, its difference to PyTorch's median and the per-pair differences; the model sizes.
Writes benchmarks/results/onnx_quality.json (--out).
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
sys.path.insert(0, str(REPO / "benchmarks"))

FIXES = ("none", "wavelet")
MB = 1e6


def summarise(rows: list[dict], ref: list[dict] | None) -> dict:
    out = {}
    for fix in FIXES:
        psnr = [r[f"nano_{fix}_psnr_y"] for r in rows]
        entry = {
            "median_psnr_y": round(statistics.median(psnr), 4),
            "median_ssim": round(statistics.median(r[f"nano_{fix}_ssim"] for r in rows), 5),
        }
        if ref is not None:
            base = [r[f"nano_{fix}_psnr_y"] for r in ref]
            diff = [a - b for a, b in zip(psnr, base, strict=True)]
            entry["median_minus_pytorch_median"] = round(statistics.median(psnr) - statistics.median(base), 4)
            entry["per_pair_diff"] = {
                "median": round(statistics.median(diff), 4),
                "min": round(min(diff), 4),
                "max": round(max(diff), 4),
            }
        out[fix] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=Path, default=REPO / "tests" / "data" / "nano_heldout", help="holds lq/ and hq/")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "onnx_quality", help="where the exports go")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "onnx_quality.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from nano_quality import score_pairs

    from sanasr_cli.evaluation.backends import ensure_export
    from sanasr_cli.measure import weight_bytes
    from sanasr_cli.models.onnx_backend import load_onnx_model
    from sanasr_cli.models.sanasr import load_model

    pairs = [(p.stem, p, args.pairs / "hq" / p.name) for p in sorted((args.pairs / "lq").glob("*.png"))]
    model = load_model("nano")
    backends = {"pytorch": model}
    contracts = {}
    for name, quantize in (("ort_fp32", "none"), ("ort_int8", "int8")):
        folder = ensure_export(model, "nano", args.work / name, quantize)
        backends[name] = load_onnx_model(folder, args.threads)
        contracts[name] = backends[name].contract
    modules = [model.transformer, model.codec.vae]
    sizes = {"pytorch_weights_fp32": round(weight_bytes(modules) / MB, 2)}
    for name, c in contracts.items():
        sizes[f"{name}_model_onnx"] = round(c["files"]["model.onnx"] / MB, 2)
        sizes[f"{name}_stages"] = round(sum(c["files"][f] for f in c["stages"].values()) / MB, 2)
    rows, seconds = {}, {}
    for name, m in backends.items():
        start = time.perf_counter()
        rows[name] = score_pairs(m, pairs, color_fixes=FIXES)
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {len(pairs)} pairs in {seconds[name]} s", flush=True)
    result = {
        "pairs": str(args.pairs),
        "n_pairs": len(pairs),
        "machine": "2-core x86-64 CPU, shared with other jobs",
        "threads": args.threads,
        "metric": "pyiqa psnr on Y (test_y_channel) and ssim, as `sanasr eval`; outputs quantised to 8 bits",
        "quantization": contracts["ort_int8"]["quantization"],
        "sizes_mb": sizes,
        "bicubic_median_psnr_y": round(statistics.median(r["bicubic_psnr_y"] for r in rows["pytorch"]), 4),
        "backends": {n: summarise(r, None if n == "pytorch" else rows["pytorch"]) for n, r in rows.items()},
        "seconds": seconds,
        "per_pair_psnr_y": {
            n: {r["image"]: [r[f"nano_{f}_psnr_y"] for f in FIXES] for r in rs} for n, rs in rows.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_pair_psnr_y"}, indent=1))


if __name__ == "__main__":
    main()
