"""Issue 13 part 2: a run encodes all its prompts first, then the text encoder leaves the accelerator; restoring
with the pre-encoded prompts never runs it again, and the outputs are the same as with it kept.

Issue 36: the encoder is freed on any device (the CPU too); a test that must prove it is not called releases it to
`meta` (its weights gone: any call into it would fail).
"""

from __future__ import annotations

import json

import pytest
import torch

from sanasr_cli.models.tiling import plan_tiles
from sanasr_cli.pipeline.upscale import (
    UpscaleOptions,
    prompts_first,
    restore_upsampled,
    restore_x4,
    upscale_files,
)
from tests.helpers import photo_folder, run

TORCH_THREADS = 1

PROMPTS = ["a cat, sharp, best quality", "tree", "blurry photo of a dog, noisy"]


def _lq(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 12, 16, generator=g)


def _encoder_device(model) -> torch.device:
    return next(model.prompts.text_encoder.parameters()).device


def test_pinned_prompts_restore_identically_with_the_encoder_released(fresh_tiny_model):
    model = fresh_tiny_model
    lq = _lq(3)
    plan = plan_tiles(model, 48, 64, "none")
    expected = restore_x4(model, lq, PROMPTS, plan, "wavelet")
    model.prompts._cache.clear()  # the pinned encodings must serve, not the LRU cache
    with model.prompts.pinned(PROMPTS):
        model.release_text_encoder("meta")  # weights gone: calling the encoder now would raise
        assert model.prompts.released and _encoder_device(model).type == "meta"
        assert model.prompts._prefix is None  # the prefix's hidden states / KV cache are dropped too
        got = restore_x4(model, lq, PROMPTS, plan, "wavelet")
        with pytest.raises(RuntimeError, match="released"):
            restore_x4(model, lq[:1], ["a prompt never encoded"], plan, "wavelet")
    assert got.device == model.device
    assert torch.equal(got, expected)


def test_pinned_outlives_the_lru_cache_and_unpins_at_the_end(fresh_tiny_model):
    enc = fresh_tiny_model.prompts
    enc._cache_size = 1
    with enc.pinned(PROMPTS):
        with enc.pinned(PROMPTS[:1]):  # nested: keeps what the outer block pinned
            pass
        assert set(enc._pinned) == set(PROMPTS)
        enc.release("meta")
        embeds, mask = enc.encode_for_transformer(PROMPTS, device="cpu")
        assert embeds.shape[0] == 3 and mask.shape == embeds.shape[:2]
    assert enc._pinned == {}


def test_prompts_first_frees_the_encoder_on_the_cpu_too(fresh_tiny_model):
    """Issue 36: on the CPU as on an accelerator, the run's prompts are encoded first and the encoder is then freed
    (dropped: a prompt never encoded builds it again); the outputs are those of a run that keeps it."""
    model = fresh_tiny_model
    lq = _lq(3)
    plan = plan_tiles(model, 48, 64, "none")
    expected = restore_x4(model, lq, PROMPTS, plan, "wavelet")
    model.prompts._cache.clear()
    builds = model.prompts.builds
    with prompts_first(model, PROMPTS):
        assert not model.prompts.built and set(model.prompts._pinned) == set(PROMPTS)
        assert torch.equal(restore_x4(model, lq, PROMPTS, plan, "wavelet"), expected)
        assert not model.prompts.built  # the pinned encodings served: nothing was built again
    assert model.prompts.builds == builds
    restore_x4(model, lq[:1], ["a prompt never encoded"], plan, "wavelet")  # built again for it
    assert model.prompts.built and model.prompts.builds == builds + 1


def test_upscale_files_encodes_every_prompt_before_restoring(fresh_tiny_model, tmp_path, monkeypatch):
    """As on an accelerator: the prompt stage runs before the first restore, then the encoder is released (to
    meta here: its weights gone, so any later call would fail) and the outputs are those of a run keeping it."""
    import sanasr_cli.pipeline.upscale as up

    model = fresh_tiny_model
    src = photo_folder(tmp_path / "in", 3, size=(12, 16))
    paths = sorted(src.iterdir())
    keep = upscale_files(model, paths, src, tmp_path / "keep", UpscaleOptions(user_prompt="x", keep_text_encoder=True))
    assert model.prompts._pinned == {} and not model.prompts.released  # keeping it: the per-batch path

    monkeypatch.setattr(up, "offloads_text_encoder", lambda m, keep=False: not keep)  # as if on a GPU
    monkeypatch.setattr(model, "release_text_encoder", lambda to="cpu": model.prompts.release("meta"))
    model.prompts._cache.clear()
    offload = upscale_files(model, paths, src, tmp_path / "off", UpscaleOptions(user_prompt="x"))
    assert model.prompts.released and model.prompts._pinned == {}  # released, and unpinned after the run
    assert [r.status for r in offload] == ["ok"] * 3 and [r.prompt for r in offload] == [r.prompt for r in keep]
    for a, b in zip(keep, offload, strict=True):
        with open(a.output, "rb") as fa, open(b.output, "rb") as fb:
            assert fa.read() == fb.read()


def test_restore_upsampled_is_sanasr_restore(tiny_model):
    x = torch.rand(2, 3, 40, 56)
    embeds, mask = tiny_model.prompts.encode_for_transformer(PROMPTS[:2])
    assert torch.equal(restore_upsampled(tiny_model, x, embeds, mask), tiny_model.restore(x, PROMPTS[:2]))


def test_upscale_cli_takes_keep_text_encoder_and_records_it(tmp_path):
    src = photo_folder(tmp_path / "in", 2, size=(12, 16))
    report = tmp_path / "run.json"
    result = run("upscale", src, "-o", tmp_path / "out", "--model", "tiny", "--keep-text-encoder", "--report", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["meta"]["text_encoder"] == "kept in memory"


def test_prompts_first_falls_back_to_per_batch_encoding_when_encoding_all_fails(fresh_tiny_model, monkeypatch):
    model = fresh_tiny_model

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    import sanasr_cli.pipeline.upscale as up

    monkeypatch.setattr(up, "offloads_text_encoder", lambda m, keep=False: not keep)  # as if on a GPU
    monkeypatch.setattr(model.prompts, "run_encoder", out_of_memory)
    with up.prompts_first(model, PROMPTS):  # no exception: each batch will encode (and fail) on its own
        assert model.prompts._pinned == {} and not model.prompts.released
