"""Start-up time of the `sanasr` process: median wall time of three commands, each in a fresh process.

    python benchmarks/startup.py --rounds 5 --json benchmarks/results/startup.json
    python benchmarks/startup.py --tree before=/path/to/an/older/checkout --tree after=.   # two trees, interleaved

- `upscale`: `sanasr upscale one.png -o OUT --model nano` on examples/lq/cat.png (64x64 -> 256x256), a new OUT
  each run: the whole command a newcomer types first, start-up included;
- `help`: `sanasr --help`;
- `import`: `python -c "from sanasr_cli import SanaSRPipeline"` (the Python API's import).

Each tree runs as `python -m sanasr_cli` (what the console script runs) with the tree on PYTHONPATH, so two
checkouts can be compared in one run: each round runs every (command, tree) once, in an order rotated per round
(a slow moment of a shared machine hits every side), after one warm-up round (file caches). Reported per command
and tree: the median and range of the wall time and the median CPU time (user + system of the child), and the
machine (CPU model, cores, load average before and after). Nothing shipped is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("upscale", "help", "import")


def machine() -> dict:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    ) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.system()}


def argv(command: str, out: Path) -> list[str]:
    if command == "upscale":
        image = REPO / "examples" / "lq" / "cat.png"
        return [sys.executable, "-m", "sanasr_cli", "upscale", str(image), "-o", str(out), "--model", "nano"]
    if command == "help":
        return [sys.executable, "-m", "sanasr_cli", "--help"]
    return [sys.executable, "-c", "from sanasr_cli import SanaSRPipeline"]


def run_once(command: str, tree: Path, work: Path) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one fresh process; a failed run stops the benchmark."""
    out = Path(tempfile.mkdtemp(dir=work))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv(command, out / "out"), env=env, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{command} in {tree} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", help="NAME=PATH of a checkout (default: this one, as 'this')")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree) if args.tree else {"this": str(REPO)}
    trees = {name: Path(path).resolve() for name, path in trees.items()}
    runs = [(c, t) for c in COMMANDS for t in trees]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {run: [] for run in runs}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        for rnd in range(args.rounds + 1):  # round 0 warms the file caches and is not counted
            order = runs[rnd % len(runs) :] + runs[: rnd % len(runs)]
            for command, tree in order:
                result = run_once(command, trees[tree], Path(work))
                if rnd:
                    times[(command, tree)].append(result)
                print(f"round {rnd} {command:8s} {tree:8s} wall {result[0]:6.2f} s  cpu {result[1]:6.2f} s", flush=True)
    report = {
        "machine": {**machine(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "rounds": args.rounds,
        "env": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE")},
        "trees": {name: str(path) for name, path in trees.items()},
        "results": [
            {
                "command": command, "tree": tree, "wall_median_s": round(statistics.median(w for w, _ in got), 2),
                "wall_min_s": round(min(w for w, _ in got), 2), "wall_max_s": round(max(w for w, _ in got), 2),
                "cpu_median_s": round(statistics.median(c for _, c in got), 2),
            }
            for (command, tree), got in times.items()
        ],
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
