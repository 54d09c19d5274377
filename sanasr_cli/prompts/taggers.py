"""Taggers: the prompt extractor Pi of Eq. 2, from an LQ image to content tags.

A tagger is anything with a `name` and `tags(image, path) -> list[str]`. The raw tags go through
`clean_tags` (one post-processing for every tagger), then `build_prompt`. Register new taggers (DAPE/RAM,
CLIP) in `TAGGERS`; the prompt rule records the tagger name so train, prune, upscale and eval agree.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch


class Tagger(Protocol):
    name: str

    def tags(self, image: torch.Tensor | None, path: Path | None) -> list[str]:
        """image: (3, H, W) float in [0, 1] (the LQ input); path: where it came from, when known."""
        ...


class NoTagger:
    """Template only (Pi(x_L) is empty)."""

    name = "none"

    def tags(self, image: torch.Tensor | None, path: Path | None) -> list[str]:
        return []


class FileTagger:
    """Reads `<image>.txt` beside the image, e.g. `cat.png` -> `cat.txt` (comma- or newline-separated tags).

    A missing tag file gives no tags (template only), as the `none` tagger would.
    """

    name = "file"

    def tags(self, image: torch.Tensor | None, path: Path | None) -> list[str]:
        if path is None:
            return []
        txt = Path(path).with_suffix(".txt")
        if not txt.is_file():
            return []
        text = txt.read_text(encoding="utf-8", errors="replace")
        return [t for t in text.replace("\n", ",").split(",") if t.strip()]


TAGGERS: dict[str, Callable[..., Tagger]] = {"none": NoTagger, "file": FileTagger}


def make_tagger(name: str, **options) -> Tagger:
    if name not in TAGGERS:
        raise ValueError(f"unknown tagger '{name}'; known taggers: {', '.join(sorted(TAGGERS))}")
    return TAGGERS[name](**options)
