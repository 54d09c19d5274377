"""The frozen tokenizer-text encoder T of Eq. 2: prompt strings -> (c, m), encoded exactly as SANA was trained.

`PromptEncoder` reproduces diffusers' `SanaPipeline.encode_prompt` as the pipeline calls it by default: the prompt
lower-cased and stripped, SANA's "complex human instruction" (CHI, read from the installed diffusers, never copied
by hand) prepended, right padding to `len(CHI tokens) + max_length - 2` tokens, and the encoder's last hidden state
cut to the first token plus the last `max_length - 1` (`select_index`). SANA-600M was trained on embeddings made
this way, so anything else is off the prior's training distribution. `complex_human_instruction=False` (the prompt
rule's `--no-chi`) keeps the plain encoding for models trained without it.

The mask m is that attention mask with, in addition, every token overlapping a degradation word of the *prompt*
set to 0 (found through the fast tokenizer's offset mapping, so it works for Gemma's tokenizer and the local one
alike). The encoder itself still sees the full text; m applies where the transformer cross-attends to c.

Two ways to run the encoder, same layout:
- `reuse_prefix=False` (the default of `encode`, what training and `tests/test_conventions.py` use): the whole
  padded sequence through Gemma, bit for bit `SanaPipeline.encode_prompt`.
- `reuse_prefix=True` (inference: `encode_for_transformer`): the CHI prefix, identical for every prompt, runs
  through Gemma once per encoder (device, dtype) and its key/value cache (transformers' `DynamicCache`, which
  keeps Gemma-2's sliding-window layers right) is deep-copied for each prompt; each prompt then runs over its
  own real tokens only. Gemma is causal, so the real positions are the reference's up to float rounding. The
  padding positions are left at zero instead of Gemma's hidden states of `<pad>`: their mask is 0, and the
  transformer gives a masked text position a -10000 attention bias (exp underflows to exactly 0) after purely
  per-token caption layers, so they cannot reach its output (tested: transformer outputs agree).
`trim_text_positions` then drops the trailing masked positions: the transformer attends over as many text
positions as the longest real prompt of the batch needs, not max_length.

The text encoder (2.6 B parameters in SANA: 10.5 GB in fp32) is built when a prompt first needs it (`load_model`
passes a function that builds it), and freed again once the run's prompts are encoded:
- a run that knows its prompts before the model is loaded (upscale, export, train with a fixed prompt) gives them
  to `load_model(prompts=...)`: they are encoded (`hold`) by the encoder alone, which is freed before the
  transformer and the VAE are built, so it never sits in memory beside them;
- a run that knows them once loaded (eval --model, prune's gate) encodes them inside `pinned(prompts)` and then
  calls `release()`, on any device;
- every encoding is also kept on the disk (`models/embedding_cache.py`, keyed by the encoder's identity and the
  prompt), so a later run whose prompts are all there never builds the encoder at all.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from sanasr_cli.models.streamed_encoder import is_streamed
from sanasr_cli.prompts.template import degradation_spans

if TYPE_CHECKING:
    from sanasr_cli.models.embedding_cache import EmbeddingCache

PIN_CHUNK = 16  # prompts encoded together by `PromptEncoder.pinned`


@functools.cache
def sana_complex_human_instruction() -> tuple[str, ...]:
    """The CHI lines that `SanaPipeline.__call__` passes to `encode_prompt` by default (from diffusers itself)."""
    from diffusers import SanaPipeline

    default = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    return tuple(default)


def preprocess_prompt(prompt: str) -> str:
    """SANA's text preprocessing without caption cleaning (the pipeline's default): lower-case, strip."""
    return prompt.lower().strip()


class PromptEncoder:
    """Encodes prompts with a frozen text encoder; identical prompts are encoded once (LRU cache, on CPU; and the
    disk cache `store` across runs)."""

    def __init__(
        self,
        tokenizer,
        text_encoder: torch.nn.Module | Callable[[], torch.nn.Module],
        max_length: int = 300,
        mask_degradation_words: bool = True,
        cache_size: int = 256,
        complex_human_instruction: bool = True,
        hidden_size: int | None = None,
        store: EmbeddingCache | None = None,
    ):
        """text_encoder: the module, or a function of the device and dtype it will run in (each None where `to`
        named none) that builds it (called when a prompt first needs the encoder, so a run whose prompts are held,
        pinned or in `store` never builds it);
        hidden_size: its width, known without building it; store: the disk cache of this encoder's encodings
        (None: none)."""
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        if isinstance(text_encoder, torch.nn.Module):
            self._encoder, self._build = text_encoder.eval().requires_grad_(False), None
        else:
            self._encoder, self._build = None, text_encoder
        self._hidden_size = hidden_size
        self._place: tuple[torch.device | None, torch.dtype | None] = (None, None)  # where `to` asked it to be
        self.store = store
        self.builds = 0  # how many times the encoder was built (a run with every prompt cached: 0)
        self._held: dict[tuple[bool, str], tuple[torch.Tensor, torch.Tensor]] = {}  # `hold`: for the encoder's life
        self.max_length = max_length
        self.mask_degradation_words = mask_degradation_words
        self.complex_human_instruction = complex_human_instruction
        self._cache: OrderedDict[tuple[bool, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size
        self._prefix: dict | None = None  # the CHI prefix run once: ids, hidden states, KV cache (per device/dtype)
        self._pinned: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # prefix-reuse encodings of the run, CPU

    @property
    def text_encoder(self) -> torch.nn.Module:
        """The text encoder module, built now if it is not (`built`); on the device and dtype of the last `to`."""
        if self._encoder is None:
            if self._build is None:
                raise RuntimeError("this PromptEncoder has no text encoder")
            device, dtype = self._place
            encoder = self._build(device, dtype)
            if not is_streamed(encoder):  # a streamed one runs where it was loaded for (its weights stay on disk)
                encoder = encoder.to(device=device, dtype=dtype)
            self._encoder = encoder.eval().requires_grad_(False)
            self.builds += 1
        return self._encoder

    @text_encoder.setter
    def text_encoder(self, module: torch.nn.Module) -> None:
        """Another encoder put in: it is this PromptEncoder's only one from now on (no builder, no disk cache, whose
        identity was the old encoder's; the prefix state and the LRU cache are dropped)."""
        self._encoder, self._build, self.store = module.eval().requires_grad_(False), None, None
        self._prefix = None
        self._cache.clear()

    @property
    def built(self) -> bool:
        """Whether the text encoder is in memory now (a loader builds it on first need, `release()` frees it)."""
        return self._encoder is not None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PromptEncoder:
        """Move the encoder (when built) and build it there later (when not)."""
        old_device, old_dtype = self._place
        self._place = (torch.device(device) if device is not None else old_device, dtype or old_dtype)
        if self._encoder is not None and is_streamed(self._encoder):
            here, its_dtype = self._encoder_device_dtype()
            if (device is not None and torch.device(device) != here) or (dtype is not None and dtype != its_dtype):
                self._encoder = None  # holds no weights: built again where asked, when a prompt needs it
        elif self._encoder is not None:
            self._encoder.to(device=device, dtype=dtype)
        return self

    @property
    def hidden_size(self) -> int:
        if self._encoder is None and self._hidden_size is not None:
            return self._hidden_size
        return self.text_encoder.config.hidden_size

    @property
    def chi_text(self) -> str:
        """The instruction prefix ('' without CHI): the CHI lines joined by newlines, as SanaPipeline does."""
        return "\n".join(sana_complex_human_instruction()) if self.complex_human_instruction else ""

    @property
    def token_budget(self) -> int:
        """Tokens run through the encoder per prompt: len(CHI tokens) + max_length - 2 (max_length without CHI)."""
        if not self.complex_human_instruction:
            return self.max_length
        return len(self.tokenizer.encode(self.chi_text)) + self.max_length - 2

    @property
    def select_index(self) -> list[int]:
        """Positions kept from the encoder's output: the first token and the last max_length - 1."""
        return [0] + list(range(-self.max_length + 1, 0))

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """input_ids (B, N), attention_mask (B, N) from the tokenizer over the CHI-prefixed text (N = token_budget),
        and mask (B, N): the attention mask with the prompts' degradation words zeroed (m of Eq. 2)."""
        prefix = self.chi_text
        texts = [preprocess_prompt(p) for p in prompts]
        enc = self.tokenizer(
            [prefix + t for t in texts],
            padding="max_length",
            max_length=self.token_budget,
            truncation=True,
            add_special_tokens=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        mask = enc["attention_mask"].clone()
        if self.mask_degradation_words:
            offsets = enc["offset_mapping"]  # (B, N, 2) character spans; (0, 0) for special/pad tokens
            for b, text in enumerate(texts):
                for start, end in degradation_spans(text):  # spans of the prompt, shifted past the prefix
                    start, end = start + len(prefix), end + len(prefix)
                    overlap = (offsets[b, :, 0] < end) & (offsets[b, :, 1] > start)
                    mask[b, overlap] = 0
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "mask": mask}

    @property
    def prefix_ids(self) -> list[int]:
        """Token ids run once and reused: the CHI's tokens without its last one ([] without CHI). The last is
        left to each prompt because a subword tokenizer may merge it with the prompt's first characters; each
        prompt's ids are checked to start with these (else that prompt runs whole, still without padding)."""
        if not self.complex_human_instruction:
            return []
        return self.tokenizer.encode(self.chi_text)[:-1]

    def _encoder_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Where the encoder runs (or will, once built: the place `to` recorded, else the CPU in float32)."""
        if self._encoder is None:
            device, dtype = self._place
            return device or torch.device("cpu"), dtype or torch.float32
        p = next(self._encoder.parameters())
        return (torch.device("cpu") if is_streamed(self._encoder) else p.device), p.dtype

    def _settings(self, reuse_prefix: bool) -> str:
        """What, besides the encoder and the prompt, an encoding depends on (the disk cache's key)."""
        import hashlib

        chi = hashlib.sha256(self.chi_text.encode()).hexdigest()[:16]
        dtype = str(self._encoder_device_dtype()[1]).replace("torch.", "")
        return f"layout={'prefix-reused' if reuse_prefix else 'padded'} dtype={dtype} T={self.max_length} chi={chi}"

    @torch.no_grad()
    def prefix_state(self, refresh: bool = False) -> dict | None:
        """The prefix's last hidden states (1, P, D) and KV cache, computed once per encoder device and dtype
        (refresh: run it again, e.g. to measure its cost)."""
        ids = self.prefix_ids
        if not ids:
            return None
        device, dtype = self._encoder_device_dtype()
        key = (tuple(ids), device, dtype)
        if refresh or self._prefix is None or self._prefix["key"] != key:
            # use_cache: the model builds its own cache (a DynamicCache with Gemma-2's sliding-window layers)
            out = self.text_encoder(input_ids=torch.tensor([ids], device=device), use_cache=True)
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            self._prefix = {"key": key, "hidden": out[0], "cache": cache}
        return self._prefix

    @torch.no_grad()
    def run_encoder(self, prompts: list[str], reuse_prefix: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, m) of `prompts` without the prompt cache, on the encoder's device (meta too: bench counts this).

        reuse_prefix=False: the padded sequence through the encoder, as `SanaPipeline.encode_prompt`.
        reuse_prefix=True: the prefix's cached keys/values + each prompt's real tokens; padding positions zero.
        """
        device, dtype = self._encoder_device_dtype()
        tok = self.tokenize(prompts)
        keep = self.select_index
        if not reuse_prefix:
            out = self.text_encoder(
                input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
            )
            return out[0][:, keep], tok["mask"][:, keep].to(device)
        state = self.prefix_state()
        n_prefix = len(state["hidden"][0]) if state else 0
        hidden = torch.zeros(len(prompts), tok["input_ids"].shape[1], self.hidden_size, device=device, dtype=dtype)
        for b in range(len(prompts)):
            n = int(tok["attention_mask"][b].sum())  # right padding: the real tokens are the first n
            ids = tok["input_ids"][b, :n]
            if state is not None and n > n_prefix and ids[:n_prefix].tolist() == list(state["key"][0]):
                # deepcopy: the forward appends this prompt's keys/values to the cache it is given
                past = {_cache_kwarg(self.text_encoder): copy.deepcopy(state["cache"])}
                out = self.text_encoder(input_ids=ids[None, n_prefix:].to(device), use_cache=True, **past)
                hidden[b, :n_prefix] = state["hidden"][0]
                hidden[b, n_prefix:n] = out[0][0]
            else:
                hidden[b, :n] = self.text_encoder(input_ids=ids[None].to(device))[0][0]
        return hidden[:, keep], tok["mask"][:, keep].to(device)

    @torch.no_grad()
    def encode(
        self, prompts: list[str], reuse_prefix: bool = False, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, m): embeddings (B, max_length, D) in the encoder's dtype, and mask (B, max_length) int64, on
        `device` (default: the encoder's), laid out as `SanaPipeline.encode_prompt` returns them (see
        `run_encoder`). Pinned and cached prompts never run the encoder."""
        device = torch.device(device) if device is not None else self._encoder_device_dtype()[0]
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for p in dict.fromkeys(prompts):
            if reuse_prefix and p in self._pinned:
                found[p] = self._pinned[p]
            elif (reuse_prefix, p) in self._held:
                found[p] = self._held[(reuse_prefix, p)]
            elif (reuse_prefix, p) in self._cache:
                self._cache.move_to_end((reuse_prefix, p))
                found[p] = self._cache[(reuse_prefix, p)]
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing and self.store is not None:  # encoded by an earlier run: the encoder is not built for them
            found.update(self._from_store(missing, reuse_prefix))
            missing = [p for p in missing if p not in found]
        if missing:
            if self.released:
                raise RuntimeError(
                    f"the text encoder was released (on {self._encoder_device_dtype()[0]}) and "
                    f"{len(missing)} prompt(s) were not encoded before, e.g. {missing[0]!r}"
                )
            embeds, mask = self.run_encoder(missing, reuse_prefix)
            for i, p in enumerate(missing):
                found[p] = (embeds[i].detach().cpu(), mask[i].cpu())
                if self.store is not None:
                    self.store.put(p, self._settings(reuse_prefix), found[p][0])
        for p in found:
            if reuse_prefix and p in self._pinned or (reuse_prefix, p) in self._held:
                continue
            self._cache[(reuse_prefix, p)] = found[p]
            self._cache.move_to_end((reuse_prefix, p))
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        embeds = torch.stack([found[p][0] for p in prompts]).to(device)
        mask = torch.stack([found[p][1] for p in prompts]).to(device)
        return embeds, mask

    def encode_for_transformer(
        self, prompts: list[str], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference path: `encode(reuse_prefix=True)` cut to the text positions the batch needs, on
        `device` (default: the encoder's; the restorer's once the encoder is released)."""
        return trim_text_positions(*self.encode(prompts, reuse_prefix=True, device=device))

    def _from_store(self, prompts: list[str], reuse_prefix: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The encodings of `prompts` that the disk cache holds (the mask is the tokenizer's, computed here)."""
        settings, dtype = self._settings(reuse_prefix), self._encoder_device_dtype()[1]
        shape = (self.max_length, self.hidden_size)
        got = {p: e for p in prompts if (e := self.store.get(p, settings, shape, dtype)) is not None}
        if not got:
            return {}
        masks = self.tokenize(list(got))["mask"][:, self.select_index]
        return {p: (e, masks[i]) for i, (p, e) in enumerate(got.items())}

    def _pin(self, prompts: list[str], into: dict, reuse_prefix: bool = True) -> list[str]:
        """Encode the prompts not yet in `into` (in chunks: the encoder's output buffer stays small) and put them
        there, on the CPU; returns those added."""
        key = (lambda p: p) if into is self._pinned else (lambda p: (reuse_prefix, p))
        added = [p for p in dict.fromkeys(prompts) if key(p) not in into]
        for start in range(0, len(added), PIN_CHUNK):
            chunk = added[start : start + PIN_CHUNK]
            embeds, mask = self.encode(chunk, reuse_prefix=reuse_prefix, device="cpu")
            for i, p in enumerate(chunk):
                into[key(p)] = (embeds[i].clone(), mask[i].clone())
        return added

    def hold(self, prompts: list[str], reuse_prefix: bool = True) -> None:
        """Encode `prompts` now (`reuse_prefix`: the inference layout; False: the padded one training uses) and keep
        them for this encoder's life, whatever the LRU cache's size: `load_model(prompts=...)` holds a run's prompts
        before building the rest of the model, then releases the encoder."""
        self._pin(list(prompts), self._held, reuse_prefix)

    @contextlib.contextmanager
    def pinned(self, prompts: list[str]) -> Iterator[None]:
        """Encode `prompts` now (inference layout, see `encode_for_transformer`) and keep them, on the CPU, until
        the block ends: inside it they never run the encoder, however many there are (the LRU cache holds
        `cache_size`). Nested blocks keep what an outer one pinned."""
        added: list[str] = []
        try:
            added = self._pin(list(prompts), self._pinned)
            yield
        finally:
            for p in added:
                self._pinned.pop(p, None)

    @property
    def released(self) -> bool:
        """True after `release(to="meta")` (or `release()` of an encoder that cannot be built again): the encoder
        holds no weights and can only serve encoded prompts."""
        if self._encoder is None:
            return self._build is None
        return self._encoder_device_dtype()[0].type == "meta"

    def release(self, to: torch.device | str | None = None) -> None:
        """Free the text encoder once the run's prompts are encoded (`hold`, `pinned`, or in the caches), on any
        device, and drop the prefix's hidden states and KV cache. None: the module is dropped (a loader that can
        build it builds it again if a prompt never encoded comes; else its weights go to "meta"); a device: moved
        there instead (e.g. "cpu" off an accelerator); "meta": its weights freed for good (such a prompt is then
        a RuntimeError naming it)."""
        self._prefix = None
        if to is None and self._build is not None:
            self._encoder = None
        elif self._encoder is not None and is_streamed(self._encoder):  # no weights held: dropped, or gone for good
            self._encoder, self._build = None, (self._build if to is not None and str(to) != "meta" else None)
        elif self._encoder is not None:
            self._encoder.to("meta" if to is None else to)


def _cache_kwarg(module: torch.nn.Module) -> str:
    """transformers 5 names the KV-cache argument `cache` (`past_key_values` is deprecated there), 4.x the latter."""
    return "cache" if "cache" in inspect.signature(type(module).forward).parameters else "past_key_values"


def trim_text_positions(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, m) without the trailing positions that are masked in every row: a masked text position gets a -10000
    cross-attention bias (weight exactly 0), so dropping it leaves the transformer's output unchanged while its
    cross-attention runs over fewer keys. At least one position is kept."""
    used = mask.bool().any(dim=0).nonzero()
    n = int(used.max()) + 1 if len(used) else 1
    return embeds[:, :n], mask[:, :n]
