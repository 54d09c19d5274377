#!/usr/bin/env bash
# One GPU session's worth of checks, under 8 minutes on one modern GPU, random weights only (no download):
#   1. the CUDA tests (tests marked to need CUDA; the rest run on any CPU),
#   2. sanasr bench at 512/1024/2048 with --compare osediff --compare full-prompt, bf16, batch 1 and batch 8,
#   3. a 4096x4096 upscale (1024x1024 input) with --tile auto, its seconds and peak CUDA memory, once as it runs
#      by default (text encoder moved to the CPU after the prompt stage) and once with --keep-text-encoder,
#   4. benchmarks/train_step.py at batch 4, 512x512 crops, bf16,
#   5. bench with --vae-decoder lite --compare decoder-full at 512 and 1024, bf16, batch 1 (DC-AE-Lite's GPU time).
# Writes one JSON (default gpu_check.json; first argument to change it): {"machine", "cuda_tests", "bench":
# {"batch1", "batch8", "lite"}, "upscale_4096", "upscale_4096_keep", "train_step", "seconds"}. Each step's log goes
# next to it
# (gpu_check.<step>.log); a failed step is recorded with its exit code and the script goes on.
set -u
OUT=${1:-gpu_check.json}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python}
LOG=${OUT%.json}
START=$(date +%s)

step() {  # step NAME CMD...: run, log, record the exit code
  local name=$1
  shift
  echo "gpu_check: $name ..." >&2
  "$@" >"$LOG.$name.log" 2>&1
  echo $? >"$WORK/$name.rc"
}

step cuda_tests timeout 90 "$PY" -m pytest -q -x -k cuda tests/
for b in 1 8; do
  step "bench_b$b" timeout 150 "$PY" -m sanasr_cli bench --random-weights --device cuda --precision bf16 \
    --size 512 --size 1024 --size 2048 --compare osediff --compare full-prompt --batch-size "$b" \
    --warmup 2 --repeats 5 --json "$WORK/bench_b$b.json"
done

# 4096x4096 output: a real-size model directory with random weights (the description says so; no download)
"$PY" - "$WORK" "${PRESET:-sana-600m-512}" "${LQ_SIDE:-1024}" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sanasr_cli.models.sanasr import describe_preset

work, preset = Path(sys.argv[1]), sys.argv[2]
SIDE = int(sys.argv[3])
(work / "model").mkdir()
describe_preset(preset, random_weights=True).save(work / "model")  # only sanasr.json: weights from the seed
(work / "lq").mkdir()
rng = np.random.default_rng(0)
Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(work / "lq" / "img.png")
EOF
step upscale_4096 timeout 150 "$PY" -m sanasr_cli upscale "$WORK/lq" -o "$WORK/sr" --model "$WORK/model" \
  --device cuda --tile auto --tagger none --report "$WORK/upscale.json"
step upscale_4096_keep timeout 150 "$PY" -m sanasr_cli upscale "$WORK/lq" -o "$WORK/sr_keep" --model "$WORK/model" \
  --device cuda --tile auto --tagger none --keep-text-encoder --report "$WORK/upscale_keep.json"
step train_step timeout 120 "$PY" benchmarks/train_step.py --batch-size 4 --crop 512 --precision bf16 \
  --steps 5 --warmup 2 --output "$WORK/train_step.json"
step bench_lite timeout 120 "$PY" -m sanasr_cli bench --random-weights --device cuda --precision bf16 \
  --size 512 --size 1024 --vae-decoder lite --compare decoder-full --warmup 2 --repeats 5 --json "$WORK/bench_lite.json"

"$PY" - "$WORK" "$OUT" "$START" <<'EOF'
import json
import sys
import time
from pathlib import Path

import torch

work, out, start = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])


def rc(name):
    return int((work / f"{name}.rc").read_text())


def load(name):
    p = work / name
    return json.loads(p.read_text()) if p.is_file() else None


def records(name):
    return [
        {k: r.get(k) for k in ("status", "output_size", "seconds", "peak_memory_mb", "memory", "tile_plan")}
        for r in (load(f"{name}.json") or {}).get("records", [])
    ]


doc = {
    "machine": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device",
    "torch": torch.__version__,
    "cuda_tests": {"exit_code": rc("cuda_tests")},
    "bench": {
        **{f"batch{b}": {"exit_code": rc(f"bench_b{b}"), "reports": load(f"bench_b{b}.json")} for b in (1, 8)},
        "lite": {"exit_code": rc("bench_lite"), "reports": load("bench_lite.json")},
    },
    "upscale_4096": {"exit_code": rc("upscale_4096"), "records": records("upscale")},
    "upscale_4096_keep": {"exit_code": rc("upscale_4096_keep"), "records": records("upscale_keep")},
    "train_step": {"exit_code": rc("train_step"), "result": load("train_step.json")},
    "seconds": round(time.time() - start, 1),
}
out.write_text(json.dumps(doc, indent=2) + "\n")
print(f"gpu_check: wrote {out} ({doc['seconds']} s)", file=sys.stderr)
EOF
