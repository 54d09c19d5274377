"""Where the start-up of `sanasr upscale one.png --model nano` goes: CPU seconds of each import stage, then the command.

    python benchmarks/startup_stages.py --rounds 5 --json benchmarks/results/startup_stages.json

Each round runs, in fresh processes and in an order alternating per round, (a) this script's child, which imports
what the command imports one stage at a time (each stage's CPU time is what it adds to those before it) and then runs
the command itself in the same process (`sanasr_cli.cli.main`, on examples/lq/cat.png, 64 -> 256 px), and (b) the
plain command (`python -m sanasr_cli upscale ...`), whose CPU time the stages should add up to. The child marks peft
as absent through the command's own `skip_peft_unless_an_adapter` before diffusers is imported, as `main` does for
nano. Reported: the median of each stage over the rounds (after one warm-up round), the plain command's median, and
the machine. Nothing shipped is changed.
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

STAGES = (  # (name, import statement): in the order the command meets them
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
COMMAND_STAGE = "the command: load nano, restore, write (and the few modules it imports lazily)"


def child(out: str) -> None:
    """Run the stages in this process and print {stage: CPU seconds} as JSON."""
    sys.path.insert(0, str(REPO))
    times, last = {}, 0.0
    for name, statement in STAGES:
        exec(statement, {})  # noqa: S102 - a fixed statement of this file
        now = time.process_time()
        times[name], last = now - last, now
    from sanasr_cli.cli import main

    sys.argv = ["sanasr", "upscale", str(IMAGE), "-o", out, "--model", "nano"]
    try:
        main()
    except SystemExit as e:
        if e.code:
            raise
    times[COMMAND_STAGE] = time.process_time() - last
    print("STAGES " + json.dumps(times))


def run(argv: list[str], work: Path) -> tuple[float, str]:
    """(CPU seconds of the child process, its stdout); a failed run stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    staged: list[dict] = []
    plain: list[float] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for rnd in range(args.rounds + 1):  # round 0 warms the file caches and is not counted
            order = ("stages", "plain") if rnd % 2 else ("plain", "stages")
            for kind in order:
                out = str(Path(tempfile.mkdtemp(dir=work)) / "out")
                if kind == "stages":
                    cpu, stdout = run([sys.executable, __file__, "--child", out], work)
                    got = json.loads(stdout.split("STAGES ", 1)[1])
                    if rnd:
                        staged.append(got)
                else:
                    argv = [sys.executable, "-m", "sanasr_cli", "upscale", str(IMAGE), "-o", out, "--model", "nano"]
                    cpu, _ = run(argv, work)
                    if rnd:
                        plain.append(cpu)
                print(f"round {rnd} {kind:6s} cpu {cpu:6.2f} s", flush=True)
    names = [name for name, _ in STAGES] + [COMMAND_STAGE]
    medians = {name: round(statistics.median(s[name] for s in staged), 2) for name in names}
    report = {
        "machine": {**machine(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "rounds": args.rounds,
        "env": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE")},
        "stage_cpu_median_s": medians,
        "stages_sum_s": round(sum(medians.values()), 2),
        "plain_command_cpu_median_s": round(statistics.median(plain), 2),
    }
    for name in names:
        print(f"| {name} | {medians[name]:.2f} |")
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
