"""Where the CPU time of `sanasr upscale one.png --model nano` goes: each import stage, the command, the shutdown.

    python benchmarks/startup_stages.py --rounds 5 --json benchmarks/results/startup_stages.json
    python benchmarks/startup_stages.py --tree before=/path/to/an/older/checkout --tree after=.   # interleaved

Each run is a fresh process (this script's child, with the tree on PYTHONPATH) that imports what the command imports,
one stage at a time in the order the command meets them (a stage's CPU time is what it adds to those before it),
then runs the command itself in the same process (`sanasr_cli.cli.main`: examples/lq/cat.png, 64 -> 256 px, a new
output folder) and, from its last atexit handler, reports its CPU time so far; the rest of the child's CPU time
(`getrusage` of the child, user + system) is the interpreter's shutdown. The child marks peft as absent through the
command's own `skip_peft_unless_an_adapter` before diffusers is imported, as `main` does for nano, so the stages
add up to the plain command. Each round runs every tree once, in an order rotated per round, after one warm-up
round. Reported: per tree, the median of each stage, and the machine. Nothing shipped is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from startup import machine

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "lq" / "cat.png"

STAGES = (  # (name, statement): in the order the command meets them
    ("interpreter + `sanasr_cli.cli` (Typer app)", "import sanasr_cli.cli"),
    (
        "torch (imported by sanasr's model description, read to see that nano loads no adapter)",
        "from sanasr_cli.cli.common import skip_peft_unless_an_adapter\nskip_peft_unless_an_adapter('nano')",
    ),
    ("torch._dynamo (diffusers' utils/torch_utils imports it)", "import torch._dynamo"),
    (
        "rest of `diffusers.utils` (importlib.metadata scan of installed packages, hub client)",
        "import diffusers.utils",
    ),
    (
        "`SanaTransformer2DModel`, `AutoencoderDC` (their mixins: transformers, scipy.stats, torchvision)",
        "from diffusers import AutoencoderDC, SanaTransformer2DModel",
    ),
    ("transformers' AutoTokenizer, AutoConfig", "from transformers import AutoConfig, AutoTokenizer"),
    ("`SanaPipeline` (the CHI default read from it)", "from diffusers import SanaPipeline"),
    ("rest of sanasr's upscale path", "import sanasr_cli.pipeline.upscale"),
)
COMMAND = "the command: load nano, restore, write (and the few modules it imports lazily)"
AT_EXIT = "atexit handlers"
SHUTDOWN = "interpreter shutdown (after the last atexit handler)"


def child(out: str) -> None:
    """Run the stages and the command in this process; print {stage: CPU seconds} as JSON from the last atexit
    handler (registered before the command registers any)."""
    import atexit

    times: dict[str, float] = {}
    last = [0.0]

    def mark(name: str) -> None:
        now = time.process_time()
        times[name], last[0] = now - last[0], now

    def report() -> None:
        mark(AT_EXIT)
        print("STAGES " + json.dumps(times), flush=True)

    atexit.register(report)
    for name, statement in STAGES:
        exec(statement, {})  # noqa: S102 - a fixed statement of this file
        mark(name)
    from sanasr_cli.cli import main

    sys.argv = ["sanasr", "upscale", str(IMAGE), "-o", out, "--model", "nano"]
    try:
        main()
    except SystemExit as e:
        if e.code:
            raise
    mark(COMMAND)


def run_once(tree: Path, work: Path) -> dict[str, float]:
    """The stages of one fresh child running `tree`, its shutdown and total included; a failed run stops it all."""
    out = str(Path(tempfile.mkdtemp(dir=work)) / "out")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, __file__, "--child", out], cwd=work, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or "STAGES " not in proc.stdout:
        raise SystemExit(f"{tree} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    times = json.loads(proc.stdout.split("STAGES ", 1)[1].splitlines()[0])
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**times, SHUTDOWN: total - sum(times.values()), "total": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", help="NAME=PATH of a checkout (default: this one, as 'this')")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    trees = dict(t.split("=", 1) for t in args.tree) if args.tree else {"this": str(REPO)}
    trees = {name: Path(path).resolve() for name, path in trees.items()}
    got: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds + 1):  # round 0 warms the file caches and is not counted
            names = list(trees)
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                times = run_once(trees[name], Path(tmp))
                if rnd:
                    got[name].append(times)
                line = f"round {rnd} {name:8s} cpu {times['total']:6.2f} s  shutdown {times[SHUTDOWN]:5.2f} s"
                print(line, flush=True)
    stages = [name for name, _ in STAGES] + [COMMAND, AT_EXIT, SHUTDOWN, "total"]
    medians = {tree: {s: round(statistics.median(t[s] for t in runs), 2) for s in stages} for tree, runs in got.items()}
    report = {
        "machine": {**machine(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "rounds": args.rounds,
        "env": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE")},
        "trees": {name: str(path) for name, path in trees.items()},
        "stage_cpu_median_s": medians,
    }
    print(f"| stage | {' | '.join(f'CPU {tree} (s)' for tree in trees)} |")
    for stage in stages:
        print(f"| {stage} | {' | '.join(f'{medians[tree][stage]:.2f}' for tree in trees)} |")
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
