"""The frozen tokenizer-text encoder T of Eq. 2: prompt strings -> (c, m).

Tokenisation follows SANA's pipeline: right padding to `max_length` (300 for SANA), truncation, special tokens
added; the encoder's last hidden state is c. The mask m is the tokenizer's attention mask with, in addition,
every token overlapping a degradation word set to 0 (found through the fast tokenizer's offset mapping, so it
works for Gemma's tokenizer and the local one alike). The encoder itself still sees the full prompt; m applies
where the transformer cross-attends to c.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from sanasr_cli.prompts.template import degradation_spans


class PromptEncoder:
    """Encodes prompts with a frozen text encoder; identical prompts are encoded once (LRU cache, on CPU)."""

    def __init__(
        self,
        tokenizer,
        text_encoder: torch.nn.Module,
        max_length: int = 300,
        mask_degradation_words: bool = True,
        cache_size: int = 256,
    ):
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.max_length = max_length
        self.mask_degradation_words = mask_degradation_words
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size

    @property
    def hidden_size(self) -> int:
        return self.text_encoder.config.hidden_size

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """input_ids (B, T), attention_mask (B, T) from the tokenizer, and mask (B, T): m of Eq. 2."""
        enc = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        mask = enc["attention_mask"].clone()
        if self.mask_degradation_words:
            offsets = enc["offset_mapping"]  # (B, T, 2) character spans; (0, 0) for special/pad tokens
            for b, text in enumerate(prompts):
                for start, end in degradation_spans(text):
                    overlap = (offsets[b, :, 0] < end) & (offsets[b, :, 1] > start)
                    mask[b, overlap] = 0
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "mask": mask}

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, m): embeddings (B, T, D) in the encoder's dtype on its device, and mask (B, T) int64 on that device."""
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
            for i, p in enumerate(missing):
                found[p] = (out[0][i].detach().cpu(), tok["mask"][i])
                self._cache[p] = found[p]
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        embeds = torch.stack([found[p][0] for p in prompts]).to(device)
        mask = torch.stack([found[p][1] for p in prompts]).to(device)
        return embeds, mask
