"""How large must an image be for NIQE and BRISQUE (sanasr's offline ones) to be stable?

    python benchmarks/nr_metric_sizes.py --photos WORK/photos/heldout --out benchmarks/results/nr_metric_sizes.json

For each photo (short side >= the largest crop size) and its bicubic x4 round trip (down by 4 and up again, PIL
bicubic: what an SR method must beat), scores `--crops` crops per size at seeded random positions (the same
positions in both), and the whole photo. Per size it reports, over all photos:
- `abs_dev_from_photo`: median |score(crop) - score(whole photo)| of the HQ crops: how far a crop's score is from
  the photo's, i.e. how much of a crop's score is which crop was drawn;
- `spread`: median over photos of the standard deviation of the HQ crops' scores;
- `hq_better_rate`: the share of crops where the metric scores the HQ crop better (lower) than the bicubic one;
- the medians of the HQ and bicubic scores.
Prints a markdown table; changes nothing shipped.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255


def bicubic_round_trip(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    small = Image.fromarray(rgb).resize((w // 4, h // 4), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="a folder of photos (PNG/JPEG)")
    parser.add_argument("--sizes", default="192,256,384,512,768")
    parser.add_argument("--crops", type=int, default=4, help="crops per photo and size")
    parser.add_argument("--max-photos", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from sanasr_cli.evaluation.nr_metrics import BRISQUE, NIQE

    metrics = {"niqe": NIQE(), "brisque": BRISQUE()}
    sizes = [int(s) for s in args.sizes.split(",")]
    photos = []
    for f in sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")):
        with Image.open(f) as im:
            if min(im.size) >= max(sizes):
                photos.append(f)
    photos = photos[: args.max_photos]
    rows: dict[str, dict[int, list[dict]]] = {m: {s: [] for s in sizes} for m in metrics}
    whole: dict[str, dict[str, dict]] = {m: {} for m in metrics}
    start = time.time()
    for f in photos:
        hq = np.asarray(Image.open(f).convert("RGB"))
        hq = hq[: hq.shape[0] // 4 * 4, : hq.shape[1] // 4 * 4]
        bic = bicubic_round_trip(hq)
        with torch.no_grad():
            for name, metric in metrics.items():
                whole[name][f.name] = {"hq": float(metric(tensor(hq))), "bicubic": float(metric(tensor(bic)))}
            rng = random.Random(f.name)
            for s in sizes:
                for _ in range(args.crops):
                    top, left = rng.randrange(hq.shape[0] - s + 1), rng.randrange(hq.shape[1] - s + 1)
                    crops = {k: a[top : top + s, left : left + s] for k, a in (("hq", hq), ("bicubic", bic))}
                    for name, metric in metrics.items():
                        scores = {k: float(metric(tensor(c))) for k, c in crops.items()}
                        rows[name][s].append({"photo": f.name, "top": top, "left": left, **scores})
        print(f"{f.name}: done ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)

    summary: dict[str, dict] = {}
    for name in metrics:
        summary[name] = {}
        for s in sizes:
            r = rows[name][s]
            devs = [abs(x["hq"] - whole[name][x["photo"]]["hq"]) for x in r]
            by_photo = [[x["hq"] for x in r if x["photo"] == p.name] for p in photos]
            summary[name][s] = {
                "abs_dev_from_photo": statistics.median(devs),
                "spread": statistics.median(statistics.stdev(v) for v in by_photo if len(v) > 1),
                "hq_better_rate": sum(x["hq"] < x["bicubic"] for x in r) / len(r),
                "median_hq": statistics.median(x["hq"] for x in r),
                "median_bicubic": statistics.median(x["bicubic"] for x in r),
                "n": len(r),
            }
        w = whole[name].values()
        summary[name]["whole"] = {
            "hq_better_rate": sum(x["hq"] < x["bicubic"] for x in w) / len(w),
            "median_hq": statistics.median(x["hq"] for x in w),
            "median_bicubic": statistics.median(x["bicubic"] for x in w),
            "n": len(w),
        }
    print("| metric | crop | median abs(crop - whole photo) | median spread (std) over a photo's crops "
          "| HQ scored better than bicubic | median HQ | median bicubic |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in metrics:
        for s in sizes:
            x = summary[name][s]
            print(
                f"| {name} | {s} | {x['abs_dev_from_photo']:.2f} | {x['spread']:.2f} | "
                f"{x['hq_better_rate']:.0%} of {x['n']} | {x['median_hq']:.2f} | {x['median_bicubic']:.2f} |"
            )
        x = summary[name]["whole"]
        print(
            f"| {name} | whole photo | - | - | {x['hq_better_rate']:.0%} of {x['n']} | {x['median_hq']:.2f} | "
            f"{x['median_bicubic']:.2f} |"
        )
    if args.out:
        doc = {
            "command": " ".join(sys.argv),
            "photos": [{"name": p.name, "size": list(Image.open(p).size)} for p in photos],
            "crops_per_size": args.crops,
            "summary": {m: {str(k): v for k, v in d.items()} for m, d in summary.items()},
            "whole": whole,
            "crops": {m: {str(s): v for s, v in d.items()} for m, d in rows.items()},
            "seconds": round(time.time() - start, 1),
        }
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
