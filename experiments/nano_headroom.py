"""Where nano's SR gain is capped: the autoencoder's ceiling, and how fast *any* learner gains over bicubic.

    python experiments/nano_headroom.py ae                                  # autoencoder ceiling, train vs held-out
    python experiments/nano_headroom.py cnn --degradation default --steps 3000
    python experiments/nano_headroom.py restorer --degradation bicubic --tau-g 100 --steps 300
    python experiments/nano_headroom.py filters                             # classical filters, nano_quality's pairs
    python experiments/nano_headroom.py blur --degradation default           # what a global blur gains, train vs val

Five probes, each appending one entry to experiments/results/nano_headroom.json:

- `ae`: Y-PSNR of D(E(x)) on the centre 256x256 of every nano photo (train and held-out): the best any SR model
  that decodes through nano's DC-AE can reach; and D(E(bicubic)) against bicubic on held-out crops for each
  degradation: what passing the input through the autoencoder costs before anything is restored.
- `cnn`: a direct learner with no autoencoder and no prior (8 conv layers, 64 channels, residual on the bicubic
  input, pixel MSE, Adam 1e-3, batch 8, 64px crops): how much a model gains over bicubic on the same data, the same
  degradation and the same budget of steps. It bounds what nano can be expected to learn at that budget.
- `restorer`: nano's own restore step (Eq. 4 at --tau-g, LoRA rank 32 on attention + FFN from the nano prior),
  adapted with pixel MSE only, on the same pairs: the method's learning curve without the alignment terms.

- `filters`: on nano_quality.py's own evaluation pairs (the held-out photos, degraded whole, seed per file), the
  gain over bicubic of classical restorers with nothing learned: OpenCV non-local-means denoising of the LQ before
  the bicubic upsampling (h = 3, 6, 10, 15), Gaussian blur (sigma 1, 2) and unsharp masking (amount 0.5, 1) of the
  bicubic image; and the oracle that picks the best of them for each image. How much of the issue's +0.5 dB a model
  could get by denoising or sharpening alone, on exactly the images nano is scored on.

- `blur`: the gain of a fixed Gaussian blur (sigma 0.8, 1.2, 2) of the bicubic image on 400 random 128px training
  crops and on the validation crops of the `cnn` probe's data: whether the training photos ask for the same simple
  correction the held-out ones do (a learner fits the training distribution).

Data of `ae`, `cnn`, `restorer` and `blur`: each nano training photo degraded whole 3 times (seeded; --copies) and
cut into aligned random crops; validation = 6 aligned 128px crops of each held-out photo, degraded whole with its
own seed.
Degradations: `default` (Real-ESRGAN x4plus, `sanasr degrade`'s default), `light` (one order, blur sigma <= 1.5,
noise sigma <= 10, JPEG >= 60), `bicubic` (anti-aliased bicubic x1/4 only: the classical SR setting).
Runs on one thread; numbers are medians over the validation crops (Y of YCbCr, no border crop).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

LIGHT = dict(
    second_order_prob=0.0,
    blur_sigma=(0.2, 1.5),
    resize_range=(0.5, 1.5),
    noise_range=(1.0, 10.0),
    poisson_scale_range=(0.05, 1.0),
    jpeg_range=(60.0, 95.0),
    jpeg_range2=(60.0, 95.0),
)
DEGRADATIONS = ("default", "light", "bicubic")


def degrader(name: str):
    """(B, 3, H, W) HQ, generator -> (B, 3, H/4, W/4) LQ."""
    from sanasr_cli.data.degradation import DegradationConfig, RealESRGANDegrader

    if name == "bicubic":
        return lambda hq, g: F.interpolate(hq, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    return RealESRGANDegrader(DegradationConfig(**LIGHT) if name == "light" else DegradationConfig())


def photos(split: str) -> list[torch.Tensor]:
    """The nano manifest's photos of one split, (3, H, W) float in [0, 1], sides cut to multiples of 4."""
    from recipes.nano.data import PHOTOS, package_data_dir
    from sanasr_cli.data.io import read_image

    out = []
    for package, rel, s in PHOTOS:
        if s == split:
            img = read_image(package_data_dir(package) / rel)[0]
            out.append(img[:, : img.shape[-2] // 4 * 4, : img.shape[-1] // 4 * 4])
    return out


def y_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of the BT.601 luma (as pyiqa's test_y_channel), (B,) for (B, 3, H, W) in [0, 1]."""
    w = torch.tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1) / 255
    ya, yb = (a.clamp(0, 1) * w).sum(1), (b.clamp(0, 1) * w).sum(1)
    return -10 * torch.log10(((ya - yb) ** 2).mean(dim=(1, 2)))


def median(x: torch.Tensor) -> float:
    return round(float(x.median()), 3)


class Pairs:
    """Training pool and validation crops for one degradation (see the module docstring)."""

    def __init__(self, degradation: str, seed: int = 0, copies: int = 3):
        from sanasr_cli.data.resample import upsample_bicubic

        self.up = lambda lq: upsample_bicubic(lq, 4).clamp(0, 1)
        degrade = degrader(degradation)
        self.g = torch.Generator().manual_seed(seed)
        self.pool = [(degrade(hq[None], self.g)[0], hq) for _ in range(copies) for hq in photos("train")]
        vg = torch.Generator().manual_seed(seed + 1)
        lq_val, hq_val = [], []
        for hq in photos("heldout"):
            lq = degrade(hq[None], vg)[0]
            for _ in range(6):
                y, x = (int(torch.randint(n - 32 + 1, (1,), generator=vg)) for n in lq.shape[-2:])
                lq_val.append(lq[:, y : y + 32, x : x + 32])
                hq_val.append(hq[:, 4 * y : 4 * y + 128, 4 * x : 4 * x + 128])
        self.val_lq_up, self.val_hq = self.up(torch.stack(lq_val)), torch.stack(hq_val)

    def batch(self, size: int, crop: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        lqs, hqs, c = [], [], crop // 4
        for _ in range(size):
            lq, hq = self.pool[int(torch.randint(len(self.pool), (1,), generator=self.g))]
            y, x = (int(torch.randint(n - c + 1, (1,), generator=self.g)) for n in lq.shape[-2:])
            lqs.append(lq[:, y : y + c, x : x + c])
            hqs.append(hq[:, 4 * y : 4 * y + crop, 4 * x : 4 * x + crop])
        return self.up(torch.stack(lqs)), torch.stack(hqs)


def probe_ae(model) -> dict:
    codec = model.codec
    with torch.no_grad():
        ceiling = {}
        for split in ("train", "heldout"):
            vals = []
            for img in photos(split):
                h, w = img.shape[-2:]
                y, x = (h - 256) // 2, (w - 256) // 2
                crop = img[None, :, y : y + 256, x : x + 256]
                vals.append(float(y_psnr(codec.decode(codec.encode(crop)), crop)))
            ceiling[split] = dict(median=round(sorted(vals)[len(vals) // 2], 2), images=[round(v, 2) for v in vals])
        passthrough = {}
        for name in DEGRADATIONS:
            p = Pairs(name, copies=0)
            ae = torch.cat([codec.decode(codec.encode(p.val_lq_up[i : i + 8])) for i in range(0, len(p.val_hq), 8)])
            passthrough[name] = dict(
                bicubic=median(y_psnr(p.val_lq_up, p.val_hq)), ae_of_bicubic=median(y_psnr(ae, p.val_hq))
            )
    return dict(ae_of_hq_centre256=ceiling, ae_of_bicubic_input=passthrough)


def learning_curve(step_fn, predict, pairs: Pairs, steps: int, every: int) -> list[dict]:
    """Run `steps` optimisation steps; every `every` steps, the median validation gain over bicubic."""
    bicubic = y_psnr(pairs.val_lq_up, pairs.val_hq)
    curve, start = [], time.time()
    for step in range(1, steps + 1):
        step_fn(*pairs.batch(8 if predict.__name__ == "cnn" else 4))
        if step % every == 0 or step == steps:
            with torch.no_grad():
                out = torch.cat([predict(pairs.val_lq_up[i : i + 8]) for i in range(0, len(pairs.val_hq), 8)])
            gain = median(y_psnr(out, pairs.val_hq) - bicubic)
            curve.append(dict(step=step, median_gain_db=gain, seconds=round(time.time() - start)))
            print(json.dumps(curve[-1]), flush=True)
    return curve


def probe_cnn(pairs: Pairs, steps: int, every: int) -> dict:
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, 64, 3, padding=1)]
    for _ in range(6):
        layers += [torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1)]
    layers += [torch.nn.ReLU(), torch.nn.Conv2d(64, 3, 3, padding=1)]
    net = torch.nn.Sequential(*layers)
    torch.nn.init.zeros_(net[-1].weight)  # starts as bicubic exactly
    torch.nn.init.zeros_(net[-1].bias)
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def cnn(x):
        return x + net(x)

    def step(x, hq):
        loss = F.mse_loss(cnn(x), hq)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return dict(curve=learning_curve(step, cnn, pairs, steps, every))


def probe_restorer(model, pairs: Pairs, tau_g: float, steps: int, every: int, lr: float = 5e-4) -> dict:
    from sanasr_cli.models.lora import DEFAULT_LORA_TARGETS, FFN_LORA_TARGETS, add_lora, lora_config, lora_parameters
    from sanasr_cli.prompts.template import build_prompt

    torch.manual_seed(0)
    codec, restorer = model.codec, model.restorer
    restorer.tau_g = float(tau_g)
    add_lora(model.transformer, lora_config(32, 32, targets=DEFAULT_LORA_TARGETS + FFN_LORA_TARGETS))
    opt = torch.optim.AdamW(lora_parameters(model.transformer), lr=lr, weight_decay=0.0)
    with torch.no_grad():
        embeds, mask = model.prompts.encode_for_transformer([build_prompt([], model.description.prompt.template)])

    def restore(x, clamp=True):
        z = codec.encode(x)
        b = z.shape[0]
        return codec.decode(restorer(z, embeds.expand(b, -1, -1), mask.expand(b, -1)), clamp=clamp)

    def step(x, hq):
        loss = F.mse_loss(restore(x, clamp=False), hq)
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():
        init = torch.cat([restore(pairs.val_lq_up[i : i + 8]) for i in range(0, len(pairs.val_hq), 8)])
    bicubic = y_psnr(pairs.val_lq_up, pairs.val_hq)
    return dict(
        lr=lr,
        lora="rank 32, attention + FFN",
        initial_gain_db=median(y_psnr(init, pairs.val_hq) - bicubic),
        curve=learning_curve(step, restore, pairs, steps, every),
    )


FILTERS = ("nlm3", "nlm6", "nlm10", "nlm15", "blur1", "blur2", "unsharp0.5", "unsharp1")


def classical(name: str, lq: np.ndarray) -> np.ndarray:
    """One classical restorer: (h, w, 3) uint8 RGB LQ -> (4h, 4w, 3) uint8 RGB, bicubic upsampling inside."""
    import cv2

    from sanasr_cli.data.resample import upsample_bicubic

    def up(x):
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).float() / 255
        return (upsample_bicubic(t, 4).permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)

    if name.startswith("nlm"):  # OpenCV works in BGR; h for luma and colour alike, 5px patches, 15px search
        h = float(name[3:])
        return up(cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(lq[..., ::-1]), None, h, h, 5, 15)[..., ::-1])
    base = up(lq)
    if name.startswith("blur"):
        return cv2.GaussianBlur(base, (0, 0), float(name[4:]))
    if name.startswith("unsharp"):
        detail = base.astype(np.float64) - cv2.GaussianBlur(base, (0, 0), 1.5)
        return (base + float(name[7:]) * detail).round().clip(0, 255).astype(np.uint8)
    if name == "bicubic":
        return base
    raise ValueError(name)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    t = torch.arange(-4, 5).float()
    k = torch.exp(-(t**2) / (2 * sigma * sigma))
    k = k / k.sum()
    return F.conv2d(F.pad(x, (4, 4, 4, 4), mode="reflect"), (k[:, None] * k[None]).expand(3, 1, 9, 9), groups=3)


def probe_blur(pairs: Pairs, crops: int = 400) -> dict:
    torch.manual_seed(0)
    out = {}
    for name, (x, hq) in (("train", pairs.batch(crops, crop=128)), ("validation", (pairs.val_lq_up, pairs.val_hq))):
        bicubic = y_psnr(x, hq)
        out[name] = dict(crops=len(x), bicubic_median=median(bicubic))
        for sigma in (0.8, 1.2, 2.0):
            gain = y_psnr(gaussian_blur(x, sigma), hq) - bicubic
            out[name][f"blur{sigma}"] = dict(median_gain_db=median(gain), mean_gain_db=round(float(gain.mean()), 3))
    print(json.dumps(out), flush=True)
    return out


def probe_filters(pairs: list[tuple[str, Path, Path]]) -> dict:
    from sanasr_cli.data.io import read_image

    def u8(path):
        return (read_image(path)[0].permute(1, 2, 0) * 255).round().byte().numpy()

    def score(img, hq):
        t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        return float(y_psnr(t, hq[None]))

    rows = []
    for key, lq_path, hq_path in pairs:
        lq, hq = u8(lq_path), read_image(hq_path)[0]
        bicubic = score(classical("bicubic", lq), hq)
        gains = {f: round(score(classical(f, lq), hq) - bicubic, 3) for f in FILTERS}
        best = max(gains, key=gains.get)
        rows.append(dict(image=key, bicubic=round(bicubic, 3), gains=gains, oracle=best, oracle_gain=gains[best]))
        print(json.dumps(rows[-1]), flush=True)
    mid = len(rows) // 2

    def med(values):
        v = sorted(values)
        return round(v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2, 3)

    return dict(
        images=rows,
        median_gain_db={f: med([r["gains"][f] for r in rows]) for f in FILTERS},
        oracle_median_gain_db=med([r["oracle_gain"] for r in rows]),
    )


def load_prior():
    """nano's base (the flow-matching prior, no SR adaptation) as a model."""
    import tempfile

    from sanasr_cli.models.sanasr import describe_preset, load_model

    with tempfile.TemporaryDirectory() as folder:
        description = describe_preset("nano")
        description.base_source = "shipped:nano"
        description.save(Path(folder))
        return load_model(folder)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=("ae", "cnn", "restorer", "filters", "blur"))
    ap.add_argument("--degradation", choices=DEGRADATIONS, default="default")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--copies", type=int, default=3, help="degradations of each training photo in the pool")
    ap.add_argument("--tau-g", type=float, default=900.0)
    ap.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate of the `restorer` probe's LoRA")
    ap.add_argument(
        "--pairs",
        type=Path,
        default=None,
        help="`filters`: a folder with lq/ and hq/ (default: make nano_quality.py's pairs under --work)",
    )
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "nano_quality")
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "nano_headroom.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    entry: dict = dict(probe=args.probe)
    if args.probe == "ae":
        from sanasr_cli.models.sanasr import load_model

        entry.update(probe_ae(load_model("nano")))
    elif args.probe == "filters":
        if args.pairs is None:
            from nano_quality import make_pairs

            pairs = make_pairs(args.work, seed=0)
            entry.update(pairs="nano_quality.py's held-out pairs (seed 0)")
        else:
            pairs = [(p.stem, p, args.pairs / "hq" / p.name) for p in sorted((args.pairs / "lq").glob("*.png"))]
            entry.update(pairs=str(args.pairs))
        entry.update(probe_filters(pairs))
    else:
        entry.update(degradation=args.degradation, copies=args.copies)
        if args.probe != "blur":
            entry.update(steps=args.steps)
        pairs = Pairs(args.degradation, copies=args.copies)
        if args.probe == "cnn":
            entry.update(probe_cnn(pairs, args.steps, args.every))
        elif args.probe == "blur":
            entry.update(probe_blur(pairs))
        else:
            entry.update(
                tau_g=args.tau_g, **probe_restorer(load_prior(), pairs, args.tau_g, args.steps, args.every, args.lr)
            )
    entry.update(seconds=round(time.time() - start), machine="2-core x86-64 CPU, one thread, shared with other jobs")
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    results.append(entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in entry.items() if k not in ("curve", "images")}, indent=2))
    return entry


if __name__ == "__main__":
    main()
