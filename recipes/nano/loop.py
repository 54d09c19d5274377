"""The resumable training loop nano's base stages share (autoencoder.py, prior.py): its own module, so that the stages
and base.py (which dispatches to them) import it without an import circle."""

from __future__ import annotations

import json
import math
import os
import time


def train_loop(name, work, module, steps, lr, step_fn, seed, save_every=100, warmup=50, clip=1.0, log=print):
    """AdamW with warmup + cosine decay (to lr / 10); gradient clipping at `clip` (0: none); a checkpoint (weights,
    optimizer, step, RNG) every save_every steps.

    The schedule is `sanasr distill`'s (training/distill.py), written as nano v1 computed it: the two round the
    cosine's argument differently (a last-bit difference in the rate), and this one rebuilds the shipped base."""
    import torch

    ckpt = work / "ckpt" / f"{name}.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    start, history = 0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["rng"])
        start, history = int(state["step"]), json.loads(state["history"])
        log(f"{name}: resumed at step {start}")

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))

    module.train()
    t0 = time.time()
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = step_fn(g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        opt.step()
        history.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            recent = sum(history[-100:]) / 100
            log(f"{name}: step {step + 1}/{steps} loss {recent:.5f} "
                f"({(time.time() - t0) / (step + 1 - start):.2f} s/step)")  # fmt: skip
        if (step + 1) % save_every == 0 or step + 1 == steps:
            state = dict(
                model=module.state_dict(),
                optimizer=opt.state_dict(),
                rng=g.get_state(),
                step=torch.tensor(step + 1),
                history=json.dumps(history),
            )
            torch.save(state, str(ckpt) + ".tmp")
            os.replace(str(ckpt) + ".tmp", ckpt)
    module.eval()
    return history
