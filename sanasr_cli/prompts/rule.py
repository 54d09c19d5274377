"""The prompt rule (App. A.1): fixed once per run, used alike by train, prune calibration, upscale and eval.

A model directory records the rule it was trained with (`ModelDescription.prompt`); `PromptRule.with_overrides`
applies what a command's prompt flags (or `SanaSRPipeline.from_pretrained`'s arguments) ask for; a command asked
to use another rule gets one warning line per differing field (`rule_mismatch`), and `tagger_from_rule` builds
the one tagger every command uses, behind the shared tag cache.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from sanasr_cli.errors import PromptRuleError
from sanasr_cli.prompts.cache import CachedTagger, default_cache_dir
from sanasr_cli.prompts.taggers import TAGGERS, Tagger, make_tagger, normalize_tagger_options
from sanasr_cli.prompts.template import DEFAULT_TEMPLATE, build_prompt, clean_tags

# The overrides of one tagger's own options: (argument, the CLI flag, key in `tagger_options`, the tagger)
TAGGER_OPTION_OVERRIDES = (
    ("tagger_weights", "--tagger-weights", "weights", "dape"),
    ("tagger_model", "--tagger-model", "model", "clip"),
    ("tag_vocab", "--tag-vocab", "vocab", "clip"),
)


@dataclass
class PromptRule:
    """Recorded in every model description. `tag_limit` caps the number of tags kept after cleaning;
    `tagger_options` are the tagger's own settings (clip: model, vocab, top_k, threshold; dape:
    weights)."""

    tagger: str = "none"
    template: str = DEFAULT_TEMPLATE
    mask_degradation_words: bool = True
    tag_limit: int = 32
    tagger_options: dict = field(default_factory=dict)
    # SANA's complex human instruction prepended as SanaPipeline.encode_prompt does (train --no-chi: off)
    complex_human_instruction: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> PromptRule:
        d = dict(d or {})
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["tagger_options"] = dict(known.get("tagger_options") or {})
        return cls(**known)

    def with_overrides(
        self,
        tagger: str | None = None,
        tagger_weights: str | Path | None = None,
        tagger_model: str | Path | None = None,
        tag_vocab: str | Path | None = None,
        template: str | None = None,
    ) -> PromptRule:
        """A copy of this rule with what is given changed (None: kept), as the prompt flags `--tagger`,
        `--tagger-weights`, `--tagger-model`, `--tag-vocab` and `--template` do. Another tagger starts without
        this rule's tagger options (they belong to its own tagger). Raises PromptRuleError for an unknown tagger
        or an option of a tagger the rule does not use."""
        if tagger is not None and tagger not in TAGGERS:
            raise PromptRuleError(f"unknown tagger '{tagger}'; known: {', '.join(sorted(TAGGERS))}")
        rule = copy.deepcopy(self)
        if tagger is not None and tagger != rule.tagger:
            rule.tagger, rule.tagger_options = tagger, {}
        given = {"tagger_weights": tagger_weights, "tagger_model": tagger_model, "tag_vocab": tag_vocab}
        for argument, flag, key, owner in TAGGER_OPTION_OVERRIDES:
            if given[argument] is None:
                continue
            if rule.tagger != owner:
                raise PromptRuleError(
                    f"{flag} applies to the {owner} tagger, not '{rule.tagger}' (add --tagger {owner})"
                )
            rule.tagger_options[key] = str(given[argument])
        if template is not None:
            rule.template = template
        return rule

    def normalized(self) -> PromptRule:
        """The same rule with the tagger's option defaults filled in (and other taggers' options
        dropped)."""
        return replace(self, tagger_options=normalize_tagger_options(self.tagger, self.tagger_options))

    def differences(self, other: PromptRule) -> list[str]:
        """Human-readable fields on which two rules differ (mismatch warnings); tagger options one a
        key."""
        out = []
        for k in self.__dataclass_fields__:
            a, b = getattr(self, k), getattr(other, k)
            if k == "tagger_options":
                for key in sorted(set(a) | set(b)):
                    if a.get(key) != b.get(key):
                        out.append(f"tagger option {key}: {a.get(key)!r} vs {b.get(key)!r}")
            elif a != b:
                out.append(f"{k}: {a!r} vs {b!r}")
        return out


def rule_mismatch(model_rule: PromptRule, asked_rule: PromptRule) -> list[str]:
    """One line per field on which the rule a command is asked to use differs from the model's (defaults
    filled in on both sides, so an option left at its default is no difference). Empty: the same rule.
    When the taggers differ, their options are not compared (they are options of different taggers)."""
    model_n, asked_n = model_rule.normalized(), asked_rule.normalized()
    if model_n.tagger != asked_n.tagger:
        model_n.tagger_options = asked_n.tagger_options = {}
    return [f"{line} (model vs this run)" for line in model_n.differences(asked_n)]


def tagger_from_rule(
    rule: PromptRule, device: str | torch.device = "cpu", cache_dir: str | Path | None = None
) -> CachedTagger:
    """The rule's tagger (with its recorded options) behind the tag cache
    (`default_cache_dir(cache_dir)`). Raises TaggerUnavailableError when the tagger's package, weights or
    vocabulary is missing."""
    options = normalize_tagger_options(rule.tagger, rule.tagger_options)
    if rule.tagger in ("clip", "dape"):
        options["device"] = device
    return CachedTagger(make_tagger(rule.tagger, **options), default_cache_dir(cache_dir))


def fixed_prompt(rule: PromptRule, user_prompt: str | None = None) -> str | None:
    """The one prompt every image gets under `rule` when its tagger reads no image (`none`: the template, after
    `user_prompt`), else None. A run with a fixed prompt knows it before loading the model (load_model(prompts=...)
    encodes it with the text encoder alone, then frees the encoder)."""
    if rule.tagger != "none":
        return None
    return build_prompt([], rule.template, user_prompt)


def prompt_for_image(
    rule: PromptRule,
    image: torch.Tensor | None,
    path: Path | None,
    tagger: Tagger | None = None,
    user_prompt: str | None = None,
) -> str:
    """p = Pi(x_L) (+) p_tpl for one image, with the rule's tagger (or the one given, already built).
    Over many images, build the tagger once with `tagger_from_rule` and pass it (a model loads once)."""
    tagger = tagger or tagger_from_rule(rule)
    tags = clean_tags(tagger.tags(image, path), limit=rule.tag_limit)
    return build_prompt(tags, rule.template, user_prompt)


def tag_files(
    tagger: Tagger,
    paths: Iterable[Path],
    read: Callable[[Path], torch.Tensor] | None = None,
    on_done: Callable[[Path], None] | None = None,
) -> dict[str, list[str]]:
    """Run the tagger once over files (filling the tag cache), then release it from the accelerator, so
    that the restoration that follows has the GPU to itself and finds every tag in the cache. Unreadable
    files, and files on which the tagger fails (e.g. out of memory), are skipped: the command meets them
    again in its own loop and reports them there. A tagger that cannot run at all (TaggerUnavailableError)
    stops the pass. Returns raw tags by path."""
    from sanasr_cli.data.io import read_image
    from sanasr_cli.errors import ImageReadError

    if tagger.identity is None:  # none / file: nothing worth precomputing
        return {}
    read = read or (lambda p: read_image(p)[0])
    lookup = getattr(tagger, "lookup", None)
    out: dict[str, list[str]] = {}
    try:
        for path in paths:
            try:
                found = lookup(path) if lookup is not None else None
                if found is None:
                    found = tagger.tags(read(path), path)
                out[str(path)] = found
            except (ImageReadError, OSError, RuntimeError, ValueError):
                pass
            if on_done:
                on_done(path)
    finally:
        tagger.release()
    return out


@dataclass
class TaggerCost:
    """The tagger's own cost for one image (a line of `bench`): parameters, load time, the first (cold)
    and the median of the following tagging calls, and peak CUDA memory during tagging (None on CPU)."""

    tagger: str
    params: int
    load_seconds: float
    first_seconds: float
    median_seconds: float
    peak_cuda_bytes: int | None
    image_size: tuple[int, int]
    macs: int | None = None  # per image, where the tagger can count them (clip: `clip_image_macs`)

    def to_dict(self) -> dict:
        return asdict(self)


def measure_tagger(tagger: Tagger, image: torch.Tensor, repeats: int = 3) -> TaggerCost:
    """Time an unwrapped image tagger (ClipTagger, DapeTagger: not the cached wrapper, which would time
    the cache) on one (3, h, w) image in [0, 1], on the device it was built for. For `sanasr bench`."""
    from sanasr_cli.measure import timed  # one timing rule for every cost report

    inner = getattr(tagger, "tagger", tagger)
    device = getattr(inner, "device", torch.device("cpu"))
    cuda = torch.device(device).type == "cuda"
    load_s = timed(getattr(inner, "load", lambda: None), device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [timed(lambda: inner.tags(image, None), device) for _ in range(max(1, repeats) + 1)]
    model = getattr(inner, "model", None)
    params = sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else 0
    rest = sorted(times[1:])
    return TaggerCost(
        tagger=inner.name,
        params=params,
        load_seconds=round(load_s, 4),
        first_seconds=round(times[0], 4),
        median_seconds=round(rest[len(rest) // 2], 4),
        peak_cuda_bytes=torch.cuda.max_memory_allocated() if cuda else None,
        image_size=(image.shape[-1], image.shape[-2]),
        macs=inner.count_macs() if hasattr(inner, "count_macs") else None,
    )
