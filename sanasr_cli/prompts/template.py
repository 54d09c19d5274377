"""The quality template, the degradation-word list, and the string side of the prompt rule (Eq. 2 / 12).

p = Pi(x_L) (+) p_tpl: content tags joined by ", ", then the fixed quality template. The attention mask m
later zeroes every token that belongs to a degradation word or phrase (see `degradation_spans`), so a stray
"blurry" that reaches the prompt (a user prompt, a tag file) cannot pull the prior towards degraded output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# App. B: the suffix the paper's experiments appended to every prompt (its Sec. 4.3 "quality suffix" ablation).
APP_B_TEMPLATE = "clean, extremely detailed, best quality, sharp, high-resolution"
# Sec. 3.2 (Eq. 2) quotes another wording; kept for models trained with it (--template "...").
SEC_3_2_TEMPLATE = "clean, sharp, best quality, detailed, 8K, high-resolution"
DEFAULT_TEMPLATE = APP_B_TEMPLATE

# Words and phrases that describe degradation rather than content. Matched case-insensitively on word boundaries;
# longer phrases are listed so that their every token is masked ("jpeg artifacts" masks both words).
DEGRADATION_WORDS: tuple[str, ...] = (
    "low quality",
    "low-quality",
    "worst quality",
    "bad quality",
    "poor quality",
    "low resolution",
    "low-resolution",
    "lowres",
    "low res",
    "jpeg artifacts",
    "compression artifacts",
    "artifacts",
    "artifact",
    "jpeg",
    "jpg",
    "compressed",
    "compression",
    "blurry",
    "blurred",
    "blur",
    "out of focus",
    "unfocused",
    "motion blur",
    "noisy",
    "noise",
    "grainy",
    "grain",
    "pixelated",
    "pixelation",
    "distorted",
    "distortion",
    "degraded",
    "deformed",
    "downsampled",
    "aliasing",
    "ringing",
    "smeared",
    "washed out",
)

_PATTERN = re.compile(
    r"(?<![\w])(" + "|".join(re.escape(w) for w in sorted(DEGRADATION_WORDS, key=len, reverse=True)) + r")(?![\w])",
    re.IGNORECASE,
)


def degradation_spans(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of every degradation word or phrase in `text`."""
    return [m.span() for m in _PATTERN.finditer(text)]


def is_degradation_word(tag: str) -> bool:
    """True when the whole tag, or any word in it, is degradation vocabulary."""
    return bool(_PATTERN.search(tag.strip()))


def clean_tags(tags: Iterable[str], limit: int | None = None) -> list[str]:
    """Post-processing shared by every tagger: strip, lowercase, drop empties and 'none', drop degradation words,
    deduplicate keeping the first occurrence (the tagger's order, i.e. most confident first), cap the count."""
    out: list[str] = []
    for tag in tags:
        t = " ".join(tag.strip().lower().split())
        if not t or t in {"none", "null", "n/a"} or is_degradation_word(t) or t in out:
            continue
        out.append(t)
        if limit is not None and len(out) >= limit:
            break
    return out


def build_prompt(tags: Iterable[str], template: str = DEFAULT_TEMPLATE, user_prompt: str | None = None) -> str:
    """Pi(x_L) (+) p_tpl (Eq. 12): '<user prompt>, <tag>, <tag>, ..., <template>'. Empty parts are skipped."""
    parts = [p.strip() for p in [user_prompt or "", *tags, template] if p and p.strip()]
    return ", ".join(parts)
