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
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict

import torch

from sanasr_cli.prompts.template import degradation_spans


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
    """Encodes prompts with a frozen text encoder; identical prompts are encoded once (LRU cache, on CPU)."""

    def __init__(
        self,
        tokenizer,
        text_encoder: torch.nn.Module,
        max_length: int = 300,
        mask_degradation_words: bool = True,
        cache_size: int = 256,
        complex_human_instruction: bool = True,
    ):
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.max_length = max_length
        self.mask_degradation_words = mask_degradation_words
        self.complex_human_instruction = complex_human_instruction
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size

    @property
    def hidden_size(self) -> int:
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

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, m): embeddings (B, max_length, D) in the encoder's dtype on its device, and mask (B, max_length)
        int64 on that device, laid out as `SanaPipeline.encode_prompt` returns them."""
        device = next(self.text_encoder.parameters()).device
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for p in dict.fromkeys(prompts):
            if p in self._cache:
                self._cache.move_to_end(p)
                found[p] = self._cache[p]
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing:
            tok = self.tokenize(missing)
            out = self.text_encoder(
                input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
            )
            keep = self.select_index
            embeds, mask = out[0][:, keep], tok["mask"][:, keep]
            for i, p in enumerate(missing):
                found[p] = (embeds[i].detach().cpu(), mask[i])
                self._cache[p] = found[p]
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        embeds = torch.stack([found[p][0] for p in prompts]).to(device)
        mask = torch.stack([found[p][1] for p in prompts]).to(device)
        return embeds, mask
