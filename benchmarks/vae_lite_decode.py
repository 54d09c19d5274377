"""DC-AE-Lite's decoder beside the full DC-AE f32c32 decoder: MACs (meta device) and paired wall time.

    python benchmarks/vae_lite_decode.py --size 128 --size 256 --repeats 5 --json lite.json [--device cuda]

Only the two decoders are built (random weights: the cost does not depend on the values), so this runs where the
whole real-size model (Gemma-2 2B) does not fit; `sanasr bench --random-weights --vae-decoder lite --compare
decoder-full` measures the same inside the whole pipeline. Timing is interleaved, full then lite, per round after a
warm-up round; the ratio is the median of the per-round ratios (full / lite: above 1, lite is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from diffusers import AutoencoderDC

from sanasr_cli.evaluation.bench import device_name, paired_ratio
from sanasr_cli.measure import count_macs, timed
from sanasr_cli.models.presets import PRESETS, lite_vae_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, action="append", help="output side in pixels (multiple of 32)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sizes = args.size or [128]
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    preset = PRESETS["sana-600m-512"]
    configs = {"full": preset.vae, "lite": lite_vae_config(preset)}
    decoders, meta = {}, {}
    for name, cfg in configs.items():
        with torch.device("meta"):
            meta[name] = AutoencoderDC(**cfg).decoder
        torch.manual_seed(0)
        with torch.device(device):
            decoders[name] = AutoencoderDC(**cfg).decoder.to(dtype).eval().requires_grad_(False)
    out = {"machine": device_name(device), "torch": torch.__version__, "dtype": args.dtype, "sizes": {}}
    for size in sizes:
        z_meta = torch.empty(1, 32, size // 32, size // 32, device="meta")
        z = torch.randn(1, 32, size // 32, size // 32, generator=torch.Generator().manual_seed(0)).to(device, dtype)
        macs = {n: count_macs(lambda d=d, z=z_meta: d(z)) for n, d in meta.items()}
        times: dict[str, list[float]] = {"full": [], "lite": []}
        with torch.no_grad():
            for d in decoders.values():  # warm-up round
                timed(lambda d=d, z=z: d(z), device)
            for r in range(args.repeats):
                for n, d in decoders.items():
                    times[n].append(timed(lambda d=d, z=z: d(z), device))
                print(f"{size}: round {r + 1}/{args.repeats}: full {times['full'][-1]:.3f} s, "
                      f"lite {times['lite'][-1]:.3f} s", flush=True)  # fmt: skip
        out["sizes"][size] = {
            "gmacs": {n: round(m / 1e9, 1) for n, m in macs.items()},
            "params_m": {n: round(sum(p.numel() for p in d.parameters()) / 1e6, 1) for n, d in decoders.items()},
            "median_s": {n: round(statistics.median(t), 4) for n, t in times.items()},
            "full_over_lite_time": round(paired_ratio(times["lite"], times["full"]), 3),
            "full_over_lite_macs": round(macs["full"] / macs["lite"], 3),
        }
        print(json.dumps({size: out["sizes"][size]}), flush=True)
    if args.json:
        from sanasr_cli.safe_files import atomic_write

        atomic_write(args.json, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
