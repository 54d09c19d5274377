"""Stage text (nano's base): a 2-layer Gemma-2 (random, frozen, from the seed) and the local word-level tokenizer,
built as every random-weight preset builds them (sanasr_cli.models.sanasr.build_random_text), saved as
diffusers-layout WORK/base/text_encoder and WORK/base/tokenizer; and the flow-matching scheduler config (nano's
shift, 3) as WORK/base/scheduler.

    python -m recipes.nano --work WORK --stage text
"""

from __future__ import annotations

from pathlib import Path

from sanasr_cli.models.presets import PRESETS

PRESET = PRESETS["nano"]


def stage_text(work: Path, seed: int) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from sanasr_cli.models.sanasr import build_random_text

    tokenizer, model = build_random_text(PRESET, seed)  # seeded with seed + 2
    base = work / "base"
    model.save_pretrained(str(base / "text_encoder"), safe_serialization=True)
    tokenizer.save_pretrained(str(base / "tokenizer"))
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=PRESET.flow_shift).save_pretrained(
        str(base / "scheduler")
    )
    return dict(vocab=len(tokenizer), params=sum(p.numel() for p in model.parameters()))
