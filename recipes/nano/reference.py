"""The reference learner: a direct CNN at LQ resolution, trained on the same pairs as nano. The headroom anchor of
nano's ladder (how much a small learner with no autoencoder and no prior gains over bicubic on these pairs).

    x_hat = bicubic(x_L) + PixelShuffle4(conv(ReLU(conv(... conv(x_L)))))

8 convolutions 3x3 (3 -> 64, 6 x 64 -> 64, 64 -> 48 = 3 * 4 * 4), ReLU, Kaiming/He initialisation (fan-in, for
ReLU), the last layer scaled by 0.1 so the start is close to bicubic without vanishing gradients. It sees the LQ
pixels directly (receptive field 17 LQ px = 68 HQ px): nano v1's probe ran a CNN on the bicubic image instead
(17 HQ px, about 4 LQ px), with PyTorch's default initialisation and a zero output layer, and learned almost
nothing (about 11% of its channels alive after training).

Trained by MSE on random aligned crops (CROP HQ px) of the training pool, Adam with cosine decay, a resumable
checkpoint (weights, optimizer, step, RNG) every `save_every` steps.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CROP = 128


class ReferenceCNN(nn.Module):
    def __init__(self, channels: int = 64, layers: int = 8, scale: int = 4):
        super().__init__()
        convs = [nn.Conv2d(3, channels, 3, padding=1)]
        convs += [nn.Conv2d(channels, channels, 3, padding=1) for _ in range(layers - 2)]
        convs += [nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)]
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        with torch.no_grad():
            convs[-1].weight.mul_(0.1)
        self.convs = nn.ModuleList(convs)
        self.scale = scale

    def forward(self, lq: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
        x = lq
        for conv in self.convs[:-1]:
            x = F.relu(conv(x))
        return bicubic + F.pixel_shuffle(self.convs[-1](x), self.scale)


def aligned_crops(lq: torch.Tensor, hq: torch.Tensor, n: int, crop: int, g: torch.Generator):
    """n random aligned (LQ, HQ) crops with random flips from uint8 pools (N, 3, h, w) / (N, 3, 4h, 4w)."""
    idx = torch.randint(len(hq), (n,), generator=g)
    s = crop // 4
    h = lq.shape[-1]
    tops = torch.randint(0, h - s + 1, (n,), generator=g)
    lefts = torch.randint(0, h - s + 1, (n,), generator=g)
    flips = torch.rand(n, generator=g) < 0.5
    xs, ys = [], []
    for i, t, left, f in zip(idx.tolist(), tops.tolist(), lefts.tolist(), flips.tolist(), strict=True):
        x = lq[i, :, t : t + s, left : left + s]
        y = hq[i, :, 4 * t : 4 * t + crop, 4 * left : 4 * left + crop]
        if f:
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs).float() / 255, torch.stack(ys).float() / 255


def train_reference(
    pool: tuple[torch.Tensor, torch.Tensor],
    ckpt: Path,
    steps: int,
    batch: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    save_every: int = 500,
    log=print,
    stop_at: int | None = None,
) -> ReferenceCNN:
    """Train (or resume) the reference learner on a uint8 pool (lq, hq) for `steps` (the cosine schedule's length),
    stopping early at `stop_at` (a point of the learning curve: call again to go on); returns it in eval mode."""
    from sanasr_cli.data.resample import upsample_bicubic

    lq_pool, hq_pool = pool
    torch.manual_seed(seed)
    model = ReferenceCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["rng"])
        start = int(state["step"])
        log(f"reference: resumed at step {start}")
    t0, recent = time.time(), []
    for step in range(start, min(steps, stop_at or steps)):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, y = aligned_crops(lq_pool, hq_pool, batch, CROP, g)
        loss = F.mse_loss(model(x, upsample_bicubic(x, 4)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent.append(float(loss))
        if (step + 1) % 100 == 0:
            log(f"reference: step {step + 1}/{steps} mse {sum(recent) / len(recent):.5f} "
                f"({(time.time() - t0) / (step + 1 - start):.3f} s/step)")  # fmt: skip
            recent = []
        if (step + 1) % save_every == 0 or step + 1 in (steps, stop_at):
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            state = dict(model=model.state_dict(), optimizer=opt.state_dict(), rng=g.get_state(), step=step + 1)
            torch.save(state, str(ckpt) + ".tmp")
            os.replace(str(ckpt) + ".tmp", ckpt)
    return model.eval()


def load_pool(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair folder as uint8 tensors (N, 3, h, w) and (N, 3, 4h, 4w) (kept as uint8: 8000 pairs are 1.6 GB)."""
    import numpy as np
    from PIL import Image

    stems = sorted(p.stem for p in (root / "hq").glob("*.png") if not p.stem.endswith(".tmp"))

    def load(sub: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(Image.open(root / sub / f"{s}.png")) for s in stems])).permute(
            0, 3, 1, 2
        )

    return load("lq"), load("hq")
