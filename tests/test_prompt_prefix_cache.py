"""Inference prompt encoding: SANA's instruction prefix through Gemma once (its KV cache reused), each prompt over
its real tokens only, the layout of `SanaPipeline.encode_prompt`; cross-attention trimmed to the text positions the
batch needs. References: diffusers' `SanaPipeline.encode_prompt` and the transformer's full-length output."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

from sanasr_cli.models.sanasr import load_model
from sanasr_cli.models.text_encoder import PromptEncoder, trim_text_positions

PROMPTS = [
    "A Cat on a table, clean, extremely detailed, best quality, sharp, high-resolution",
    "tree",
    "blurry photo of a dog with jpeg artifacts, noisy",
    ", ".join(["red flower"] * 60),  # truncated: the full budget, past the tiny Gemma's 256-token sliding window
]


TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)


def _reference(model, prompts, chi: bool):
    pipe = SanaPipeline(
        tokenizer=model.prompts.tokenizer,
        text_encoder=model.prompts.text_encoder,
        vae=model.codec.vae,
        transformer=model.transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    default = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    embeds, mask, *_ = pipe.encode_prompt(
        prompts,
        do_classifier_free_guidance=False,
        max_sequence_length=model.prompts.max_length,
        complex_human_instruction=default if chi else None,
    )
    return embeds, mask


def _model(chi: bool, sliding_window: int | None = None):
    model = load_model("tiny")
    if sliding_window is not None:  # a window far shorter than the prefix: the cache must slide it right
        from transformers import Gemma2Model

        cfg = model.prompts.text_encoder.config
        cfg.sliding_window = sliding_window
        torch.manual_seed(5)
        model.prompts.text_encoder = Gemma2Model(cfg).eval().requires_grad_(False)
    model.prompts.complex_human_instruction = chi
    return model


@pytest.mark.numerics
@pytest.mark.parametrize(
    "chi, window", [(True, None), (False, None), (True, 16)], ids=["chi", "no-chi", "chi-window16"]
)
def test_reused_prefix_equals_encode_prompt_on_real_positions(chi, window):
    model = _model(chi, window)
    ref_embeds, ref_mask = _reference(model, PROMPTS, chi)
    embeds, mask = model.prompts.encode(PROMPTS, reuse_prefix=True)
    assert embeds.shape == ref_embeds.shape
    # the mask is exactly the full encode's (attention mask with the degradation words zeroed)
    assert torch.equal(mask, model.prompts.encode(PROMPTS)[1])
    assert torch.all(mask <= ref_mask)
    real = ref_mask.bool()
    assert real.sum(1).tolist()[:2] != real.sum(1).tolist()[2:]  # really prompts of different lengths
    torch.testing.assert_close(embeds[real], ref_embeds[real], rtol=1e-5, atol=1e-5)
    # padding: zero, where the reference holds Gemma's states of <pad> (masked downstream, see the next test)
    assert torch.all(embeds[~real] == 0) and ref_embeds[~real].abs().max() > 0


def test_prefix_runs_once_and_each_prompt_over_its_real_tokens_only():
    model = _model(chi=True)
    enc = model.prompts
    lengths = []
    hook = enc.text_encoder.register_forward_pre_hook(
        lambda _m, _a, kw: lengths.append(kw["input_ids"].shape), with_kwargs=True
    )
    try:
        enc.encode(["tree", "a cat on a table"], reuse_prefix=True)
        enc.encode(["sky"], reuse_prefix=True)
    finally:
        hook.remove()
    n_prefix = len(enc.prefix_ids)
    assert n_prefix == len(enc.tokenizer.encode(enc.chi_text)) - 1
    tok = enc.tokenize(["tree", "a cat on a table", "sky"])
    real = tok["attention_mask"].sum(1).tolist()
    assert lengths == [(1, n_prefix)] + [(1, n - n_prefix) for n in real]  # prefix once; no padding, no prefix
    assert max(real) < enc.token_budget


def test_prompt_whose_tokens_do_not_start_with_the_prefix_runs_whole(monkeypatch):
    """A tokenizer may merge the prefix's end with a prompt: then that prompt runs from its first token."""
    model = _model(chi=True)
    ids = model.prompts.prefix_ids
    monkeypatch.setattr(PromptEncoder, "prefix_ids", property(lambda self: ids[:-1] + [ids[-1] + 1]))
    ref_embeds, ref_mask = _reference(model, PROMPTS[:2], chi=True)
    embeds, _ = model.prompts.run_encoder(PROMPTS[:2], reuse_prefix=True)
    real = ref_mask.bool()
    torch.testing.assert_close(embeds[real], ref_embeds[real], rtol=1e-5, atol=1e-5)


@pytest.mark.numerics
@pytest.mark.parametrize("chi", [True, False])
def test_trimmed_cross_attention_equals_full_length_transformer_output(chi):
    model = _model(chi)
    prompts = ["tree", "blurry photo of a dog, clean, sharp"]
    ref_embeds, ref_mask = _reference(model, prompts, chi)
    _, our_mask = model.prompts.encode(prompts)  # m = the reference mask with degradation words zeroed
    embeds, mask = model.prompts.encode_for_transformer(prompts)
    full_len, n = model.prompts.max_length, embeds.shape[1]
    longest = int(ref_mask.sum(1).max())
    assert n == longest < full_len  # as many text positions as the longest real prompt needs
    torch.testing.assert_close(mask, our_mask[:, :n], rtol=0, atol=0)
    z = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    full = model.restorer(z, ref_embeds, our_mask)  # 64 positions, Gemma's <pad> states in the padding
    trimmed = model.restorer(z, embeds, mask)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)
    # the comparison can fail: the same trimmed run with the degradation words unmasked differs
    assert not torch.allclose(model.restorer(z, embeds, ref_mask[:, :n]), full, rtol=1e-5, atol=1e-5)


def test_trim_keeps_one_position_when_everything_is_masked():
    e, m = torch.ones(2, 5, 3), torch.tensor([[1, 0, 1, 0, 0], [1, 1, 0, 0, 0]])
    te, tm = trim_text_positions(e, m)
    assert te.shape == (2, 3, 3) and tm.tolist() == [[1, 0, 1], [1, 1, 0]]
    assert trim_text_positions(e, torch.zeros_like(m))[0].shape == (2, 1, 3)
