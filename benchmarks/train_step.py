"""Step time and peak memory of one `sanasr train` optimizer step, on random weights (no download).

Builds the real-size architecture of a preset (SANA-600M LinearDiT + DC-AE f32c32 for `sana-600m-512`) with
random weights, adds the LoRA adapter of the training defaults (rank 64 on to_q/to_k/v/to_out.0), and times
the very step function `sanasr train` runs (`sanasr_cli.training.loop.run_training_step`: restore, decode, MSE
+ LPIPS + alignment + consistency, backward, clip, AdamW). LPIPS uses a random VGG16 trunk (same compute as
the pretrained one). Text embeddings are random tensors of the encoder's shape: `train` encodes each distinct
prompt once and caches it, so the text encoder is not part of a step.

    python benchmarks/train_step.py --batch-size 4 --crop 512 --precision bf16            # on a GPU
    python benchmarks/train_step.py --batch-size 4 --crop 512 --gradient-checkpointing
    python benchmarks/train_step.py --preset tiny --crop 16 --steps 2 --precision fp32   # CPU smoke test

Prints one JSON object: median / mean step seconds over the timed steps (after warm-up), peak CUDA memory
allocated and reserved during the timed steps, parameter counts, and the device name. `measure_train_step` is
the function a `sanasr bench` can call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def measure_train_step(
    preset: str = "sana-600m-512",
    batch_size: int = 4,
    crop: int = 512,
    steps: int = 10,
    warmup: int = 2,
    precision: str = "bf16",
    gradient_checkpointing: bool = False,
    lora_rank: int = 64,
    seed: int = 0,
) -> dict:
    """Time `steps` training steps after `warmup` ones on the accelerator's device (CUDA when there is one);
    returns a JSON-able record."""
    import torch

    from sanasr_cli.models.lora import DEFAULT_LORA_TARGETS, add_lora, lora_config
    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.models.restorer import OneStepRestorer
    from sanasr_cli.models.sanasr import build_random_transformer, build_random_vae
    from sanasr_cli.models.vae import LatentCodec
    from sanasr_cli.training import loop
    from sanasr_cli.training.config import TrainConfig

    p = PRESETS[preset]
    config = TrainConfig(
        model=preset,
        hq=[Path(tempfile.gettempdir())],
        crop=crop,
        batch_size=batch_size,
        lora_rank=lora_rank,
        lora_alpha=float(lora_rank),
        precision=precision,
        gradient_checkpointing=gradient_checkpointing,
        perceptual_backbone="random",
        seed=seed,
    ).validate()
    accelerator = loop.create_accelerator(config)
    dev = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    from accelerate.utils import set_seed

    set_seed(seed)  # as `sanasr train` does: the LoRA init, LPIPS's random trunk, every draw of a step (issue 36)

    transformer = build_random_transformer(p, seed, weight_dtype).to(dev)  # built in its dtype: no fp32 copy
    vae = build_random_vae(p, seed, weight_dtype).to(dev)
    add_lora(transformer, lora_config(lora_rank, lora_rank, 0.0, DEFAULT_LORA_TARGETS))
    for name, param in transformer.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
    transformer.train()
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()

    class _Model:  # the two attributes build_objective reads
        restorer = OneStepRestorer(transformer, tau_g=900.0, flow_shift=p.flow_shift)
        codec = LatentCodec(vae)

    objective = loop.build_objective(config, _Model, dev)
    optimizer, scheduler = loop.create_optimizer(config, objective)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    params = [q for q in objective.parameters() if q.requires_grad]
    gens = loop.make_generators(config, accelerator)

    g = torch.Generator(device="cpu").manual_seed(seed)
    hq = torch.rand(batch_size, 3, crop, crop, generator=g).to(dev)
    lq_up = torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(hq, scale_factor=0.25, mode="area"), scale_factor=4, mode="bicubic"
    ).clamp(0, 1)
    text_len = p.max_text_length
    embeds = torch.randn(batch_size, text_len, p.transformer["caption_channels"], generator=g).to(dev, weight_dtype)
    mask = torch.ones(batch_size, text_len, dtype=torch.long, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    losses, times = [], []
    for i in range(warmup + steps):
        if i == warmup and dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sync()
        t0 = time.perf_counter()
        metrics, _ = loop.run_training_step(
            objective, (lq_up, hq), embeds, mask, optimizer, scheduler, accelerator, config, gens, params
        )
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            losses.append(metrics["loss"])
    record = {
        "preset": preset,
        "batch_size": batch_size,
        "crop": crop,
        "precision": accelerator.mixed_precision,
        "gradient_checkpointing": gradient_checkpointing,
        "lora_rank": lora_rank,
        "steps_timed": steps,
        "warmup_steps": warmup,
        "step_seconds_median": statistics.median(times),
        "step_seconds_mean": statistics.fmean(times),
        "images_per_second": batch_size / statistics.median(times),
        "losses": losses,
        "trainable_params": sum(q.numel() for q in params),
        "transformer_params": sum(q.numel() for n, q in transformer.named_parameters() if "lora_" not in n),
        "vae_params": sum(q.numel() for q in vae.parameters()),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        record["peak_memory_allocated_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        record["peak_memory_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / 2**30
    accelerator.end_training()
    loop.release_accelerator_state()
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="sana-600m-512", choices=["sana-600m-512", "tiny"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--lora-rank", type=int, default=64)
    ap.add_argument("--output", type=Path, help="Also write the JSON record here.")
    args = ap.parse_args(argv)
    record = measure_train_step(
        args.preset,
        args.batch_size,
        args.crop,
        args.steps,
        args.warmup,
        args.precision,
        args.gradient_checkpointing,
        args.lora_rank,
    )
    text = json.dumps(record, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
