"""Taggers: the prompt extractor Pi of Eq. 2, from an LQ image to content tags.

A tagger is anything with a `name`, an `identity` (a string that changes whenever its output could change,
used as the cache key; None for taggers not worth caching), `tags(image, path) -> list[str]` and `release()`
(free the accelerator after use). The raw tags go through `clean_tags` (one post-processing for every tagger),
then `build_prompt`. Built-in taggers:

- `none`: template only; `file`: `<image>.txt` beside the image;
- `clip`: zero-shot CLIP over a tag vocabulary (`clip_tagger.py`);
- `dape`: SeeSR's degradation-aware RAM through the `ram` package (`dape.py`), the paper's Pi.

Image taggers see the LQ image upsampled x4 bicubically first (`base.tagger_input`), as SeeSR/OSEDiff feed DAPE
(the image is then resized to the tagger's own input size), so every command derives the same tags from the same
file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from sanasr_cli.prompts.base import DEFAULT_CLIP_MODEL

log = logging.getLogger("sanasr")
MAX_TAG_FILE_BYTES = 1 << 16  # a tag file is a line of words; more is not read


class Tagger(Protocol):
    name: str
    identity: str | None

    def tags(self, image: torch.Tensor | None, path: Path | None) -> list[str]:
        """image: (3, H, W) float in [0, 1] (the LQ input); path: where it came from, when known."""
        ...

    def release(self) -> None:
        """Move any model off the accelerator (called once tagging of a batch of files is done)."""
        ...


class NoTagger:
    """Template only (Pi(x_L) is empty)."""

    name = "none"
    identity = None

    def tags(self, image: torch.Tensor | None, path: Path | None) -> list[str]:
        return []

    def release(self) -> None:
        pass


class FileTagger:
    """Reads `<image>.txt` beside the image, e.g. `cat.png` -> `cat.txt` (comma- or newline-separated
    tags).

    A missing tag file (or one that is a symbolic link, never followed) gives no tags (template only), as the
    `none` tagger would. Not cached: the text
    file is cheap to read and may be edited.
    """

    name = "file"
    identity = None

    def tags(self, image: torch.Tensor | None, path: Path | None) -> list[str]:
        if path is None:
            return []
        txt = Path(path).with_suffix(".txt")
        if txt.is_symlink() or not txt.is_file():  # a link could lead anywhere: not followed, as image links
            return []
        data = txt.read_bytes()[:MAX_TAG_FILE_BYTES]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or any(ord(c) < 32 and c not in "\t\r\n" or ord(c) == 127 for c in text):
            # a binary file beside an image (or control bytes that could rewrite the terminal): not tags
            log.warning("warning: %s is not a text file of tags (invalid UTF-8 or control bytes): not used", txt)
            return []
        return [t for t in text.replace("\n", ",").split(",") if t.strip()]

    def release(self) -> None:
        pass


def _clip(**options) -> Tagger:
    from sanasr_cli.prompts.clip_tagger import ClipTagger

    return ClipTagger(**options)


def _dape(**options) -> Tagger:
    from sanasr_cli.prompts.dape import DapeTagger

    return DapeTagger(**options)


TAGGERS: dict[str, Callable[..., Tagger]] = {
    "none": NoTagger,
    "file": FileTagger,
    "clip": _clip,
    "dape": _dape,
}

# Options each tagger records in the prompt rule (and their defaults). Runtime-only options (device) are not
# here.
TAGGER_OPTIONS: dict[str, dict] = {
    "none": {},
    "file": {},
    "clip": {"model": DEFAULT_CLIP_MODEL, "vocab": None, "top_k": 8, "threshold": 0.01},
    "dape": {"weights": None},
}


def normalize_tagger_options(name: str, options: dict | None) -> dict:
    """The tagger's recorded options with defaults filled in; options of other taggers dropped."""
    defaults = TAGGER_OPTIONS.get(name, {})
    given = options or {}
    return {k: given.get(k, v) if given.get(k) is not None else v for k, v in defaults.items()}


def make_tagger(name: str, **options) -> Tagger:
    """Build a tagger by name. Image taggers load their model lazily (on the first image not in the
    cache)."""
    if name not in TAGGERS:
        raise ValueError(f"unknown tagger '{name}'; known taggers: {', '.join(sorted(TAGGERS))}")
    if name in ("none", "file"):
        return TAGGERS[name]()
    return TAGGERS[name](**options)
