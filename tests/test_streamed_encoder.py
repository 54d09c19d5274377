"""Issue 36, a large text encoder on a CPU: streamed from its own safetensors files (accelerate's disk offload over
the checkpoint, `models/streamed_encoder.py`), so a first upscale of the real model does not hold Gemma-2's 10.5 GB.
Here the shipped nano's encoder is streamed by lowering the size threshold; the real size is measured in
benchmarks/cpu_real_size.py."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import sanasr_cli.models.sanasr as sanasr_module
from sanasr_cli.errors import ModelDirError
from sanasr_cli.models import streamed_encoder
from sanasr_cli.models.presets import PRESETS, resolve_base_source
from sanasr_cli.models.sanasr import build_prompt_encoder, describe_preset, load_pretrained_text_encoder
from sanasr_cli.models.streamed_encoder import is_streamed, streaming_device_map
from sanasr_cli.models.text_encoder import PromptEncoder
from tests.helpers import one_error_line, photo_folder, run

PROMPTS = ["a red cat on a sofa", "blurry, noisy photo of a harbour at dusk"]


def _nano_encoder(monkeypatch, stream: bool):
    monkeypatch.setattr(streamed_encoder, "STREAM_ABOVE_BYTES", 0 if stream else 1 << 40)
    source = resolve_base_source("shipped:nano")
    return load_pretrained_text_encoder(PRESETS["nano"], source, torch.float32, local=True)


def _prompt_encoder(encoder) -> PromptEncoder:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_source("shipped:nano"), subfolder="tokenizer")
    return PromptEncoder(tokenizer, encoder, max_length=PRESETS["nano"].max_text_length)


def test_a_streamed_encoder_holds_no_weights_and_encodes_as_the_loaded_one(monkeypatch):
    streamed, loaded = _nano_encoder(monkeypatch, True), _nano_encoder(monkeypatch, False)
    assert is_streamed(streamed) and not is_streamed(loaded)
    big = [p for name, p in streamed.named_parameters() if not name.startswith(("norm", "rotary"))]
    assert big and all(p.is_meta for p in big)  # the layers and embedding stay in their files between forwards
    a, b = _prompt_encoder(streamed), _prompt_encoder(loaded)
    for reuse_prefix in (False, True):  # padded as SanaPipeline, and the prefix's KV cache reused per prompt
        (ea, ma), (eb, mb) = a.run_encoder(PROMPTS, reuse_prefix), b.run_encoder(PROMPTS, reuse_prefix)
        assert ea.device.type == "cpu" and torch.equal(ma, mb)
        torch.testing.assert_close(ea, eb, rtol=1e-5, atol=1e-5)
        assert ea.abs().amax() > 0.1  # real encodings, not zeros
    assert all(p.is_meta for p in big)  # and dropped again after them
    a.release()  # nothing to free, and a streamed encoder that cannot be built again serves no new prompt
    with pytest.raises(RuntimeError, match="released"):
        a.encode(["a prompt never encoded"])


def test_upscale_with_the_encoder_streamed_writes_the_same_images(tmp_path, monkeypatch):
    built = []
    load = sanasr_module.load_pretrained_text_encoder

    def spy(*args, **kwargs):
        built.append(load(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(sanasr_module, "load_pretrained_text_encoder", spy)
    monkeypatch.setenv("SANASR_PROMPT_CACHE", "off")
    src = photo_folder(tmp_path / "in", 2, size=(16, 20))
    for name, threshold in (("loaded", 1 << 40), ("streamed", 0)):
        monkeypatch.setattr(streamed_encoder, "STREAM_ABOVE_BYTES", threshold)
        result = run("upscale", src, "-o", tmp_path / name, "--model", "nano", "--prompt", "a red cat")
        assert result.exit_code == 0, result.output
        assert "offloaded" not in result.output  # accelerate's note on where it put the weights is not for the user
    assert [is_streamed(e) for e in built] == [False, True]
    for path in sorted((tmp_path / "loaded").glob("*.png")):
        a = np.asarray(Image.open(path), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "streamed" / path.name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # the same encodings: at most a rounding step in 8-bit


def test_a_streamed_encoder_with_a_nan_weight_is_refused(tmp_path, monkeypatch):
    base = tmp_path / "base"
    shutil.copytree(resolve_base_source("shipped:nano"), base)
    file = base / "text_encoder" / "model.safetensors"
    weights = load_file(file)
    key = next(k for k in weights if "layers.1" in k and weights[k].ndim == 2)
    weights[key][0, 0] = float("nan")
    save_file(weights, file, metadata={"format": "pt"})
    monkeypatch.setattr(streamed_encoder, "STREAM_ABOVE_BYTES", 0)
    with pytest.raises(ModelDirError, match=f"weight '{key}' holds NaN"):
        load_pretrained_text_encoder(PRESETS["nano"], str(base), torch.float32, local=True)


def test_only_a_large_encoder_on_a_cpu_is_streamed(monkeypatch):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_base_source("shipped:nano"), subfolder="text_encoder")
    size = sum(p.numel() for p in _nano_encoder(monkeypatch, False).parameters()) * 4
    plan = streaming_device_map
    monkeypatch.setattr(streamed_encoder, "STREAM_ABOVE_BYTES", size - 1)
    streams = {"embed_tokens": "disk", "layers": "disk", "norm": "cpu", "rotary_emb": "cpu"}
    assert plan(config, torch.float32, None) == streams == plan(config, torch.float32, "cpu")
    assert plan(config, torch.float32, "cuda") is None  # an accelerator holds it (and frees it)
    assert plan(config, torch.bfloat16, "cpu") is None  # half the bytes: under the line
    monkeypatch.setattr(streamed_encoder, "STREAM_ABOVE_BYTES", size)
    assert plan(config, torch.float32, "cpu") is None


def test_a_streamed_encoder_is_kept_where_it_stays_and_dropped_where_it_moves(monkeypatch):
    monkeypatch.setattr(streamed_encoder, "STREAM_ABOVE_BYTES", 0)
    prompts = build_prompt_encoder(describe_preset("nano"), PRESETS["nano"], torch.float32, local=True)
    prompts.store = None
    first = prompts.to("cpu", torch.float32).text_encoder
    assert is_streamed(first) and prompts.builds == 1
    prompts.to("cpu", torch.float32)  # the same place (SanaSR.to at the end of load_model): no second load
    assert prompts.text_encoder is first and prompts.builds == 1
    prompts.to(dtype=torch.bfloat16)  # another dtype: it holds no weights to cast, so it is loaded again in it
    assert prompts.builds == 1 and not prompts.built
    assert prompts.text_encoder.dtype == torch.bfloat16 and prompts.builds == 2


@pytest.mark.parametrize("threshold", [0, 1 << 40], ids=["streamed", "loaded"])
def test_a_damaged_text_encoder_file_is_one_line(tmp_path, monkeypatch, threshold):
    """An interrupted download leaves a truncated .safetensors: one line naming the part (exit 1), not "a bug"."""
    base = tmp_path / "base"
    shutil.copytree(resolve_base_source("shipped:nano"), base)
    file = base / "text_encoder" / "model.safetensors"
    with open(file, "r+b") as f:
        f.truncate(file.stat().st_size - 5000)
    monkeypatch.setattr(streamed_encoder, "STREAM_ABOVE_BYTES", threshold)
    monkeypatch.setenv("SANASR_PROMPT_CACHE", "off")
    src = photo_folder(tmp_path / "in", 1, size=(16, 16))
    result = run("upscale", src, "-o", tmp_path / "out", "--model", "nano", "--base", base)
    assert result.exit_code == 1, result.output
    line = " ".join(one_error_line(result).split())
    assert "missing weights for 'text_encoder'" in line and "file not fully covered" in line, line
    assert "bug" not in line
