"""Issue 36, the text encoder out of memory: a run's prompts are encoded first by the text encoder alone, which is then
freed before the rest of the model is built; encodings are kept on the disk under the encoder's identity, so a later
run whose prompts are all there never builds the encoder (SANA's Gemma-2 2B: 10.5 GB in fp32)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

import sanasr_cli.models.sanasr as sanasr_module
from sanasr_cli.models.sanasr import load_model
from tests.helpers import pair_folder, photo_folder, run

TORCH_THREADS = 1


@pytest.fixture
def spied(monkeypatch):
    """Counts text-encoder builds, and records whether a text encoder and a transformer were ever in memory together
    (each build looks for a live one of the other kind)."""
    seen = {"encoders": 0, "together": False, "encoder_refs": [], "transformer_refs": []}
    build_encoder, build_transformer = sanasr_module.build_random_text_encoder, sanasr_module.build_random_transformer

    def alive(kind: str) -> bool:
        gc.collect()
        return any(r() is not None for r in seen[kind])

    def encoder(*args, **kwargs):
        seen["encoders"] += 1
        seen["together"] |= alive("transformer_refs")
        module = build_encoder(*args, **kwargs)
        seen["encoder_refs"].append(weakref.ref(module))
        return module

    def transformer(*args, **kwargs):
        seen["together"] |= alive("encoder_refs")
        module = build_transformer(*args, **kwargs)
        seen["transformer_refs"].append(weakref.ref(module))
        return module

    monkeypatch.setattr(sanasr_module, "build_random_text_encoder", encoder)
    monkeypatch.setattr(sanasr_module, "build_random_transformer", transformer)
    return seen


def test_a_cached_prompt_upscale_never_builds_the_text_encoder(tmp_path, monkeypatch, spied):
    cache = tmp_path / "prompt-cache"
    monkeypatch.setenv("SANASR_PROMPT_CACHE", str(cache))
    src = photo_folder(tmp_path / "in", 2, size=(12, 16))
    first = run("upscale", src, "-o", tmp_path / "a", "--model", "tiny", "--prompt", "a red cat")
    assert first.exit_code == 0, first.output
    assert spied["encoders"] == 1  # the run's one prompt, encoded ...
    assert not spied["together"]  # ... and the encoder freed before the transformer was built
    assert len(list(cache.rglob("*.safetensors"))) == 1

    second = run("upscale", src, "-o", tmp_path / "b", "--model", "tiny", "--prompt", "a red cat")
    assert second.exit_code == 0, second.output
    assert spied["encoders"] == 1  # found in the cache: never built
    for name in sorted(p.name for p in (tmp_path / "a").iterdir() if p.suffix == ".png"):
        a, b = (np.asarray(Image.open(tmp_path / d / name)) for d in ("a", "b"))
        assert np.array_equal(a, b)  # the same embeddings, stored as computed

    third = run("upscale", src, "-o", tmp_path / "c", "--model", "tiny", "--prompt", "a blue dog")
    assert third.exit_code == 0, third.output
    assert spied["encoders"] == 2  # a prompt never encoded builds it


def test_another_encoder_is_never_served_another_encoders_embeddings(tmp_path, monkeypatch, spied):
    """The key is the encoder's identity (seed, config, versions for random weights; the weight files' fingerprint
    for pretrained ones) and its dtype, besides the prompt: other weights or another dtype miss."""
    monkeypatch.setenv("SANASR_PROMPT_CACHE", str(tmp_path / "c"))
    prompt = ["a tree, sharp"]
    e0, _ = load_model("tiny", seed=0).prompts.encode_for_transformer(prompt)
    assert spied["encoders"] == 1
    again = load_model("tiny", seed=0)
    assert torch.equal(again.prompts.encode_for_transformer(prompt)[0], e0) and spied["encoders"] == 1
    other = load_model("tiny", seed=1)
    e1, _ = other.prompts.encode_for_transformer(prompt)
    assert spied["encoders"] == 2 and not torch.allclose(e0, e1)
    bf16 = load_model("tiny", seed=0, dtype=torch.bfloat16)
    eb, _ = bf16.prompts.encode_for_transformer(prompt)
    assert spied["encoders"] == 3 and eb.dtype == torch.bfloat16


def test_a_damaged_or_foreign_cache_entry_is_a_miss(tmp_path, monkeypatch, spied):
    cache = tmp_path / "c"
    monkeypatch.setenv("SANASR_PROMPT_CACHE", str(cache))
    model = load_model("tiny")
    want, _ = model.prompts.encode_for_transformer(["a cat"])
    model.prompts.encode_for_transformer(["a dog"])
    entries = {p.stat().st_mtime_ns: p for p in cache.rglob("*.safetensors")}
    cat, dog = (entries[k] for k in sorted(entries))
    cat.write_bytes(dog.read_bytes())  # a valid file, but another prompt's: its metadata names the other key
    fresh = load_model("tiny")
    assert torch.equal(fresh.prompts.encode_for_transformer(["a cat"])[0], want) and spied["encoders"] == 2
    cat.write_bytes(b"not a safetensors file")
    fresh = load_model("tiny")
    assert torch.equal(fresh.prompts.encode_for_transformer(["a cat"])[0], want) and spied["encoders"] == 3


def test_held_prompts_serve_without_the_encoder_after_load(spied):
    """load_model(prompts=...) with the disk cache off: encoded once by the encoder alone, which is freed before
    the transformer is built; restoring with those prompts never builds it again."""
    prompts = ["a cat, sharp", "a dog"]
    model = load_model("tiny", prompts=prompts)
    assert spied["encoders"] == 1 and not spied["together"] and not model.prompts.built
    reference = load_model("tiny")
    x = torch.rand(2, 3, 32, 48)
    assert torch.equal(model.restore(x, prompts), reference.restore(x, prompts))
    assert not model.prompts.built and model.prompts.builds == 1 and spied["encoders"] == 2  # the reference's


def test_random_parts_built_in_bf16_are_the_fp32_ones_cast():
    """Each part is built in its target dtype (no float32 copy of the whole model for a bf16 run), with the very
    values a float32 build cast afterwards has: a random model is the same model in any precision."""
    bf16, fp32 = load_model("tiny", dtype=torch.bfloat16), load_model("tiny")
    for a, b in ((bf16.transformer, fp32.transformer), (bf16.codec.vae, fp32.codec.vae)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert p.dtype == torch.bfloat16 and torch.equal(p, q.to(torch.bfloat16)), name
    a, b = bf16.prompts.text_encoder.state_dict(), fp32.prompts.text_encoder.state_dict()
    assert all(torch.equal(a[k], b[k].to(torch.bfloat16)) for k in b)


def test_random_parts_never_hold_a_float32_sub_module_once_it_is_attached():
    """The float32 peak of a bf16 build is one sub-module, not the model: whenever a module is attached to its parent,
    everything below it is bf16 already (a float32 build cast at the end fails this)."""
    from torch.nn.modules.module import register_module_module_registration_hook

    float32 = []

    def check(parent, name, child):  # registered first, so it sees each child before the build's own cast
        for sub_name, sub in child.named_children() if child is not None else ():
            float32.extend(f"{name}.{sub_name}" for p in sub.parameters() if p.dtype == torch.float32)

    handle = register_module_module_registration_hook(check)
    try:
        model = load_model("tiny", dtype=torch.bfloat16)
        model.prompts.text_encoder  # noqa: B018 - built on first need: build it now
    finally:
        handle.remove()
    assert not float32, float32[:5]


def test_a_random_folder_of_the_fast_preset_keeps_its_students(tmp_path):
    """A sana-600m-512-fast folder written the gpu_check.sh way (sanasr.json only) loads with the preset's
    students (built on the meta device here: real size)."""
    from diffusers import AutoencoderDC

    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.models.sanasr import build_students, describe_preset, resolve_model

    describe_preset("sana-600m-512-fast", random_weights=True).save(tmp_path)
    description, folder = resolve_model(tmp_path)
    preset = PRESETS["sana-600m-512-fast"]
    with torch.device("meta"):
        vae = AutoencoderDC(**preset.vae)
    encoder, decoder = build_students(description, folder, preset, vae, torch.float32, False, device="meta")
    assert encoder is not None and decoder is not None
    assert build_students(description, folder, preset, vae, torch.float32, True, device="meta") == (None, None)


# ---------------------------------------------------------------- every command that knows its prompts first


def test_prune_encodes_its_fixed_prompt_first_and_saves_in_the_sources_dtype(tmp_path, spied):
    """Fisher calibration and the gate use the model's fixed prompt (no tagger): encoded before the model is built
    (both layouts), the encoder freed; a bf16 run of an fp32 model writes fp32 weights, as its source is stored."""
    from safetensors import safe_open

    pairs = pair_folder(tmp_path / "pairs")
    out = tmp_path / "pruned"
    r = run(
        "prune", "tiny", "-o", out, "--budget", "75K", "--calib", pairs, "--steps", 2, "--crop", 16,
        "--lambda-p", 0, "--validate", pairs, "--max-drop", "1", "--precision", "bf16",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert spied["encoders"] == 1 and not spied["together"]
    with safe_open(str(next((out / "transformer").glob("*.safetensors"))), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


def test_merge_lora_builds_neither_the_vae_nor_the_text_encoder(tmp_path, fresh_tiny_model, monkeypatch, spied):
    from sanasr_cli.models.lora import add_lora, lora_config
    from sanasr_cli.models.sanasr import save_model_dir

    add_lora(fresh_tiny_model.transformer, lora_config(rank=4, alpha=8))
    adapted = save_model_dir(fresh_tiny_model, tmp_path / "adapted", save_transformer=False)
    vaes = []
    build_vae = sanasr_module.build_random_vae
    monkeypatch.setattr(sanasr_module, "build_random_vae", lambda *a, **k: vaes.append(1) or build_vae(*a, **k))
    r = run("merge-lora", adapted, "-o", tmp_path / "merged")
    assert r.exit_code == 0, r.output
    assert vaes == [] and spied["encoders"] == 0  # only the transformer it folds (and the adapter) was loaded
    merged = load_model(tmp_path / "merged")
    assert merged.transformer.dtype == torch.float32 and not merged.description.adapter


def test_train_with_a_fixed_prompt_frees_the_encoder_before_building_the_rest(tmp_path, spied):
    from tests.helpers import TINY_TRAIN

    hq = photo_folder(tmp_path / "hq", 2)
    r = run("train", "--hq", hq, "-o", tmp_path / "run", "--max-steps", "1", "--precision", "fp32", *TINY_TRAIN)
    assert r.exit_code == 0, r.output
    assert spied["encoders"] == 1 and not spied["together"]
