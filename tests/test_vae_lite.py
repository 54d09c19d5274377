"""Issue 13 part 2: `--vae-decoder lite`, DC-AE-Lite's ResBlock-only decoder on the same latent space, recorded in
the model description, loadable from a local folder (`vae_lite/` beside a local base, or a path), counted in bench
and compared there with the full decoder (`--compare decoder-full`)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderDC

from sanasr_cli.errors import MissingWeightsError, ModelDirError
from sanasr_cli.evaluation.bench import BenchOptions, run_bench
from sanasr_cli.models.presets import PRESETS, lite_vae_config
from sanasr_cli.models.sanasr import load_model
from tests.helpers import invoke, photo_folder

TORCH_THREADS = 1


def _block_types(decoder) -> set[str]:
    return {type(m).__name__ for m in decoder.modules()}


def test_tiny_lite_decoder_decodes_and_is_recorded():
    full = load_model("tiny", seed=0)
    lite = load_model("tiny", seed=0, vae_decoder="lite")
    assert lite.description.vae_decoder == "lite" and lite.description.to_dict()["vae_decoder"] == "lite"
    assert full.description.vae_decoder == "full"
    assert "EfficientViTBlock" in _block_types(full.codec.vae.decoder)
    assert "EfficientViTBlock" not in _block_types(lite.codec.vae.decoder)  # ResBlocks only
    assert torch.equal(  # the same encoder: only the decoder changes
        full.codec.encode(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))),
        lite.codec.encode(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))),
    )
    z = torch.randn(2, lite.codec.latent_channels, 4, 5)
    out = lite.codec.decode(z)
    assert out.shape == (2, 3, 32, 40) and out.min() >= 0 and out.max() <= 1
    sr = lite.restore(torch.rand(1, 3, 40, 48), ["tree"])
    assert sr.shape == (1, 3, 40, 48) and torch.isfinite(sr).all()


def test_real_size_lite_config_is_the_released_shape():
    cfg = lite_vae_config(PRESETS["sana-600m-512"])
    assert cfg["decoder_block_types"] == "ResBlock" and cfg["decoder_conv_act_fn"] == "silu"
    assert cfg["decoder_layers_per_block"] == (0, 3, 5, 4, 4, 4)
    assert cfg["decoder_block_out_channels"] == (128, 256, 512, 512, 1024, 1024)
    assert cfg["encoder_block_types"] == PRESETS["sana-600m-512"].vae["encoder_block_types"]  # same encoder


def test_lite_decoder_from_a_folder_and_from_vae_lite_beside_a_local_base(tmp_path):
    folder = tmp_path / "lite"
    with torch.random.fork_rng():
        torch.manual_seed(7)
        AutoencoderDC(**lite_vae_config(PRESETS["tiny"])).save_pretrained(str(folder))
    saved = AutoencoderDC.from_pretrained(str(folder)).decoder.state_dict()
    model = load_model("tiny", vae_decoder=str(folder))  # a random-weight preset still reads the given weights
    for k, v in model.codec.vae.decoder.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # nano's base is a local folder: vae_lite/ beside its vae/ is found there
    from sanasr_cli.models.presets import resolve_base_source

    nano_base = resolve_base_source(PRESETS["nano"].hub_id)
    base = tmp_path / "base"
    base.mkdir()
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (base / sub).symlink_to(f"{nano_base}/{sub}")
    with torch.random.fork_rng():
        AutoencoderDC(**lite_vae_config(PRESETS["nano"])).save_pretrained(str(base / "vae_lite"))
    nano = load_model("nano", base=str(base), vae_decoder="lite")
    assert nano.description.vae_decoder == "lite"
    assert "EfficientViTBlock" not in _block_types(nano.codec.vae.decoder)


def test_missing_or_wrong_lite_weights_are_one_clear_error(tmp_path, monkeypatch):
    import sanasr_cli.models.sanasr as sanasr_module

    # never the network in tests: the hub id stands for a place where nothing is
    monkeypatch.setattr(sanasr_module, "DC_AE_LITE_HUB_ID", str(tmp_path / "not-downloaded"))
    with pytest.raises(MissingWeightsError, match=r"DC-AE-Lite.*hf download"):
        load_model("nano", vae_decoder="lite")  # no vae_lite/ in the shipped base, nothing where the hub id says
    with pytest.raises(ModelDirError, match="--vae-decoder takes full, lite or"):
        load_model("tiny", vae_decoder=str(tmp_path / "nothing"))
    other = tmp_path / "other"
    AutoencoderDC(**{**lite_vae_config(PRESETS["tiny"]), "latent_channels": 4}).save_pretrained(str(other))
    with pytest.raises(ModelDirError, match="latents are 4 channels"):
        load_model("tiny", vae_decoder=str(other))
    result = invoke("upscale", photo_folder(tmp_path / "in", 1, size=(8, 8)), "-o", tmp_path / "o", "--model",
                    "tiny", "--vae-decoder", "bogus")  # fmt: skip
    assert result.exit_code == 2 and "--vae-decoder takes full, lite or" in result.output


def test_bench_counts_the_lite_decoder_and_compares_it_with_the_full_one(tmp_path):
    (r,) = run_bench("tiny", BenchOptions(sizes=(64,), latency="off", vae_decoder="lite", compare=("decoder-full",)))
    full = r["compare"]["decoder-full"]
    assert "DC-AE-Lite decode" in r["pipeline"] and "DC-AE decode" in full["pipeline"]
    assert r["parts"]["vae_decode"]["macs"] != full["parts"]["vae_decode"]["macs"]
    for part in ("vae_encode", "text_encoder", "transformer"):
        assert r["parts"][part]["macs"] == full["parts"][part]["macs"]  # shared modules
    assert full["ratios"]["vae_decode"]["macs"] == pytest.approx(
        full["parts"]["vae_decode"]["macs"] / r["parts"]["vae_decode"]["macs"]
    )
    js = tmp_path / "b.json"
    args = ["bench", "--model", "tiny", "--size", "64", "--vae-decoder", "lite", "--compare", "decoder-full"]
    result = invoke(*args, "--latency", "on", "--warmup", "0", "--repeats", "2", "--device", "cpu", "--json", js)
    assert result.exit_code == 0, result.output
    timed = json.loads(js.read_text())["compare"]["decoder-full"]
    assert timed["ratios"]["vae_decode"]["latency_ms"] > 0 and timed["ratios"]["end_to_end"]["latency_ms"] > 0
    bad = invoke("bench", "--model", "tiny", "--latency", "off", "--compare", "decoder-full")
    assert bad.exit_code == 2 and "add --vae-decoder lite" in bad.output


def test_real_size_lite_decoder_macs_on_meta():
    (r,) = run_bench(
        "sana-600m-512",
        BenchOptions(sizes=(512,), latency="off", random_weights=True, vae_decoder="lite", compare=("decoder-full",)),
    )
    assert r["parts"]["vae_decode"]["macs"] / 1e9 == pytest.approx(939.3, rel=0.01)
    assert r["compare"]["decoder-full"]["parts"]["vae_decode"]["macs"] / 1e9 == pytest.approx(1046.1, rel=0.01)


def test_a_decoder_asked_for_beside_a_decoder_student_is_refused_by_the_library():
    """nano-fast decodes with its distilled decoder student: load_model refuses a --vae-decoder that would never run
    (the description would record it), for the Python API as for the CLI; with full_vae the choice applies, and
    bench still measures nano-fast, students included, when no decoder is asked for."""
    for choice in ("full", "lite"):  # refused before any decoder is looked for (nano has no lite weights)
        with pytest.raises(ModelDirError, match="decoder student"):
            load_model("nano-fast", vae_decoder=choice)
    model = load_model("nano-fast", vae_decoder="full", full_vae=True)
    assert model.codec.light_decoder is None and model.description.vae_decoder == "full"
    assert load_model("nano-fast").codec.light_decoder is not None
    with pytest.raises(ModelDirError, match="decoder student"):
        run_bench("nano-fast", BenchOptions(sizes=(64,), latency="off", vae_decoder="lite"))
    from sanasr_cli.evaluation.peers import build_sanasr

    for device in ("meta", "cpu"):  # bench's two ways of building a model: counted on meta, timed on the device
        with pytest.raises(ModelDirError, match="decoder student"):
            build_sanasr("nano-fast", device, vae_decoder="full")
        built = build_sanasr("nano-fast", device)
        assert built.codec.light_decoder is not None and built.info["full_decoder"] is None
