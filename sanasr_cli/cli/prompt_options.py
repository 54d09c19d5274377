"""Prompt-rule options shared by every command that builds prompts (upscale, train, prune, eval).

Use the option constants as parameter defaults and call `asked_prompt_rule` with the model's recorded rule:

    tagger: str = TAGGER, tagger_weights: Path = TAGGER_WEIGHTS, tagger_model: str = TAGGER_MODEL,
    tag_vocab: Path = TAG_VOCAB, template: str = TEMPLATE, tag_cache: str = TAG_CACHE
    rule = asked_prompt_rule(model.description.prompt, tagger, tagger_weights, tagger_model, tag_vocab,
                             template)
    tagger_obj = build_tagger(rule, device, tag_cache)       # one clear line + exit 1 when it cannot run
    pretag(tagger_obj, image_paths)                           # optional: tag all files first, with a bar

Pass `warn=False` where the model has no trained rule (a preset, e.g. when `train` starts from the base).

The returned rule is the model's, with only the flags given changed, and a warning line for each field that
then differs from what the model was trained with (Eq. 12: one rule for train, calibration, upscale and eval).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sanasr_cli.cli.common import EXIT_FAILED, EXIT_USAGE, console, fail

if TYPE_CHECKING:
    import torch

TAGGER = typer.Option(
    None,
    "--tagger",
    help="Prompt tagger Pi: none, file (<image>.txt), clip (zero-shot CLIP), dape (SeeSR's DAPE/RAM). "
    "Default: the model's prompt rule.",
    rich_help_panel="Prompt",
)
TAGGER_WEIGHTS = typer.Option(
    None,
    "--tagger-weights",
    help="dape: folder with ram_swin_large_14m.pth and DAPE.pth (or the DAPE.pth file).",
    rich_help_panel="Prompt",
)
TAGGER_MODEL = typer.Option(
    None,
    "--tagger-model",
    help="clip: hub id or local folder of a transformers CLIP model (default openai/clip-vit-base-patch32).",
    rich_help_panel="Prompt",
)
TAG_VOCAB = typer.Option(
    None,
    "--tag-vocab",
    help="clip: tag vocabulary file, one tag a line (default: the one shipped with sanasr).",
    rich_help_panel="Prompt",
)
TEMPLATE = typer.Option(
    None,
    "--template",
    help="Quality template appended to the tags (default: the model's prompt rule; new models get App. B's "
    "'clean, extremely detailed, best quality, sharp, high-resolution'; Sec. 3.2's wording is "
    "'clean, sharp, best quality, detailed, 8K, high-resolution').",
    rich_help_panel="Prompt",
)
TAG_CACHE = typer.Option(
    None,
    "--tag-cache",
    help="Tag cache folder (default $SANASR_TAG_CACHE or ~/.cache/sanasr/tags; 'off' disables).",
    rich_help_panel="Prompt",
)


def asked_prompt_rule(
    model_rule,
    tagger: str | None = None,
    tagger_weights: Path | None = None,
    tagger_model: str | None = None,
    tag_vocab: Path | None = None,
    template: str | None = None,
    warn: bool = True,
):
    """The rule this command is asked to use: the model's rule with the given flags applied
    (`PromptRule.with_overrides`). Usage errors (unknown tagger, an option of another tagger) raise typer.Exit(2)
    after one line; differences from the model's rule print one warning line each."""
    from sanasr_cli.errors import PromptRuleError

    try:
        rule = model_rule.with_overrides(tagger, tagger_weights, tagger_model, tag_vocab, template)
    except PromptRuleError as e:
        raise fail(str(e), EXIT_USAGE) from None
    if warn:
        warn_rule_mismatch(model_rule, rule)
    return rule


def warn_rule_mismatch(model_rule, asked_rule) -> list[str]:
    """Print one rich warning line per field on which the asked rule differs from the model's; return
    them."""
    from sanasr_cli.prompts.rule import rule_mismatch

    lines = rule_mismatch(model_rule, asked_rule)
    if lines:
        console.print(
            "[yellow]warning:[/] this prompt rule differs from the one the model was trained with "
            "(App. A.1: use one rule for train, calibration, upscale and eval):",
            highlight=False,
        )
    for line in lines:
        console.print(f"[yellow]warning:[/]   {line}", highlight=False, soft_wrap=True)
    return lines


def pretag(tagger, images) -> None:
    """Tag every image once with a progress bar (filling the tag cache), then release the tagger from the GPU.
    Taggers without a model (none, file) are skipped. Commands call it before their main loop."""
    from sanasr_cli.cli.options import progress_bar
    from sanasr_cli.errors import TaggerUnavailableError
    from sanasr_cli.prompts.rule import tag_files

    if tagger.identity is None:
        return
    images = list(images)
    try:
        with progress_bar(f"tag ({tagger.name})", description=False, transient=True) as progress:
            task = progress.add_task("", total=len(images))
            tag_files(tagger, images, on_done=lambda _: progress.advance(task))
    except TaggerUnavailableError as e:  # e.g. the CLIP model is not found when it is first loaded
        raise fail(str(e), EXIT_FAILED) from None


def build_tagger(rule, device: torch.device | str = "cpu", tag_cache: str | None = None):
    """The rule's tagger behind the tag cache; a missing package, weights or vocabulary: one line, exit
    1."""
    from sanasr_cli.errors import TaggerUnavailableError
    from sanasr_cli.prompts.rule import tagger_from_rule

    try:
        return tagger_from_rule(rule, device=device, cache_dir=tag_cache)
    except TaggerUnavailableError as e:
        raise fail(str(e), EXIT_FAILED) from None
