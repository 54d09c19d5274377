"""Seconds per image of nano and of a peer (default: Real-ESRGAN x4plus), side by side, interleaved.

    python benchmarks/nano_vs_peer_speed.py                              # 1 thread, 64 -> 256, the CI pairs' LQ
    python benchmarks/nano_vs_peer_speed.py --threads 2 --repeats 5 --out /tmp/speed.json

What is timed is the model call of each method on a (1, 3, 64, 64) LQ image, as a user's run spends it per image
after start-up: nano through `upscale_tensor` (the upscale path: bicubic, VAE encode, the prompt's embeddings,
one transformer step, VAE decode, upscale's default wavelet colour fix), the peer through `Peer.__call__` (10 px
reflect padding, the network, the crop). Both are loaded once; each round times every image once with each method,
the order of the methods alternating between rounds, so a machine whose load changes slows both alike. Reported: the
median seconds per image of each, and the ratio nano / peer (what issue 33 asks: at most 1/3).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nano")
    ap.add_argument("--peer", default="realesrgan-x4plus")
    ap.add_argument("--lq", type=Path, default=REPO / "tests" / "data" / "nano_heldout" / "lq")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="rounds over the images")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from sanasr_cli.data.io import read_image
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.peers.peer import load_peer
    from sanasr_cli.pipeline.upscale import upscale_tensor
    from sanasr_cli.prompts.template import build_prompt

    model, peer = load_model(args.model), load_peer(args.peer)
    prompt = build_prompt([], model.description.prompt.template)
    images = [read_image(p)[0] for p in sorted(args.lq.glob("*.png"))]
    methods = {
        "nano": lambda lq: upscale_tensor(model, lq, prompt),
        "peer": lambda lq: peer(lq[None]),
    }
    with torch.no_grad():
        for fn in methods.values():  # warm-up: first calls allocate and pick kernels
            fn(images[0])
        times: dict[str, list[float]] = {name: [] for name in methods}
        for r in range(args.repeats):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for lq in images:
                for name in order:
                    start = time.perf_counter()
                    methods[name](lq)
                    times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": args.threads, "images": len(images), "rounds": args.repeats,
        "input": f"{tuple(images[0].shape[-2:])} LQ -> x4", "model": args.model, "peer": args.peer,
        "median_seconds": {k: round(v, 4) for k, v in median.items()},
        "ratio_nano_over_peer": round(median["nano"] / median["peer"], 4),
        "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
