"""The prompt rule (App. A.1): fixed once per run and used alike by train, prune calibration, upscale and eval."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sanasr_cli.prompts.taggers import Tagger, make_tagger
from sanasr_cli.prompts.template import DEFAULT_TEMPLATE, build_prompt, clean_tags


@dataclass
class PromptRule:
    """Recorded in every model description. `tag_limit` caps the number of tags kept after cleaning."""

    tagger: str = "none"
    template: str = DEFAULT_TEMPLATE
    mask_degradation_words: bool = True
    tag_limit: int = 32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> PromptRule:
        d = dict(d or {})
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def differences(self, other: PromptRule) -> list[str]:
        """Human-readable fields on which two rules differ (for mismatch warnings)."""
        return [
            f"{k}: {getattr(self, k)!r} vs {getattr(other, k)!r}"
            for k in self.__dataclass_fields__
            if getattr(self, k) != getattr(other, k)
        ]


def prompt_for_image(
    rule: PromptRule,
    image: torch.Tensor | None,
    path: Path | None,
    tagger: Tagger | None = None,
    user_prompt: str | None = None,
) -> str:
    """p = Pi(x_L) (+) p_tpl for one image, with the rule's tagger (or the one given, already built)."""
    tagger = tagger or make_tagger(rule.tagger)
    tags = clean_tags(tagger.tags(image, path), limit=rule.tag_limit)
    return build_prompt(tags, rule.template, user_prompt)
