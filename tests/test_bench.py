"""`sanasr bench`: MACs of the real-size architectures (meta device), the JSON shape, latency on a tiny model,
model directories measured as they are, the plot."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sanasr_cli.cli import app
from sanasr_cli.evaluation.bench import BenchOptions, run_bench

runner = CliRunner()


TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)


G, M = 1e9, 1e6
PART_KEYS = {"params", "macs", "latency_ms", "peak_memory_mb"}


def test_real_size_macs_match_the_design_table():
    """SANA-600M / DC-AE / SD-2.1 shapes at 512x512, random weights on the meta device (DESIGN.md's table: the
    full-length prompt); the prefix reuse and the trimmed cross-attention against it."""
    from sanasr_cli.evaluation.peers import BENCH_PROMPT, build_sanasr

    (r,) = run_bench(
        "sana-600m-512",
        BenchOptions(sizes=(512,), latency="off", compare=("osediff", "full-prompt"), random_weights=True),
    )
    parts, full = r["parts"], r["compare"]["full-prompt"]
    assert full["parts"]["transformer"]["macs"] / G == pytest.approx(157.8, rel=0.01)
    assert full["end_to_end"]["macs"] / G == pytest.approx(1851.3, rel=0.01)
    # text encoder per distinct 30-word prompt: >= 10x fewer MACs than the full-length (instruction + 298) encode
    assert full["ratios"]["text_encoder"]["macs"] >= 10
    assert full["parts"]["text_encoder"]["macs"] / G == pytest.approx(1028.1, rel=0.01)  # 495 tokens
    assert 0 < r["once"]["text_encoder_prefix"]["macs"] < full["parts"]["text_encoder"]["macs"]
    # the transformer is cheaper by exactly what the removed text positions cost: per position the caption
    # projection (2304 -> 1152 -> 1152) and, in each of 28 blocks, to_k, to_v and QK^T, AV over 16x16 latents
    model = build_sanasr("sana-600m-512", "meta", random_weights=True)
    tok = model.prompts.tokenize([BENCH_PROMPT])
    kept = int(tok["attention_mask"].sum()) - (model.prompts.token_budget - 299) + 1  # first + the real tail
    per_position = 2304 * 1152 + 1152 * 1152 + 28 * (2 * 1152 * 1152 + 2 * 256 * 1152)
    saved = full["parts"]["transformer"]["macs"] - parts["transformer"]["macs"]
    assert saved == (300 - kept) * per_position
    assert parts["transformer"]["macs"] / G == pytest.approx(133.9, rel=0.01)
    assert parts["vae_encode"]["macs"] / G == pytest.approx(647.4, rel=0.01)
    assert parts["vae_decode"]["macs"] / G == pytest.approx(1046.1, rel=0.01)
    assert parts["transformer"]["params"] / M == pytest.approx(591.7, rel=0.001)
    assert parts["vae_encode"]["params"] / M == pytest.approx(153.0, rel=0.001)
    assert parts["vae_decode"]["params"] / M == pytest.approx(159.2, rel=0.001)
    assert parts["text_encoder"]["params"] / M == pytest.approx(2614.3, rel=0.001)  # Gemma-2 2B, counted apart
    e2e = r["end_to_end"]
    assert e2e["macs"] == pytest.approx(
        sum(parts[p]["macs"] for p in ("vae_encode", "transformer", "vae_decode")), rel=1e-6
    )
    assert e2e["macs"] / G == pytest.approx(1827.4, rel=0.01)
    ose = r["compare"]["osediff"]
    assert ose["end_to_end"]["macs"] / G == pytest.approx(2217.7, rel=0.01)
    assert ose["parts"]["transformer"]["params"] / M == pytest.approx(865.9, rel=0.001)  # the SD-2.1 UNet
    assert ose["parts"]["transformer"]["macs"] / G == pytest.approx(402.1, rel=0.01)
    assert ose["ratios"]["end_to_end"]["macs"] == pytest.approx(2217.7 / 1827.4, rel=0.01)
    for entry in [*parts.values(), e2e, *ose["parts"].values()]:
        assert entry["latency_ms"] is None and entry["peak_memory_mb"] is None  # --latency off: not measured
    assert "not measured" in r["notes"]["latency"]


def test_fused_attention_is_counted_on_meta_but_missed_on_cpu():
    """Why bench counts on the meta device: the SD UNet's self-attention runs through fused SDPA kernels."""
    from diffusers.models.attention_processor import Attention

    from sanasr_cli.measure import count_macs

    attn = Attention(query_dim=64, heads=4, dim_head=16)
    x = torch.zeros(1, 256, 64)
    with torch.device("meta"):
        attn_meta = Attention(query_dim=64, heads=4, dim_head=16)
    on_meta = count_macs(lambda: attn_meta(x.to("meta")))
    projections = 4 * 256 * 64 * 64  # q, k, v, out
    assert on_meta == projections + 2 * 256 * 256 * 64  # + QK^T and AV
    assert count_macs(lambda: attn(x)) < on_meta  # CPU tensors: fused SDPA not counted (torch 2.x)


def test_cli_json_shape_latency_and_plot_on_tiny(tmp_path):
    js, png = tmp_path / "b.json", tmp_path / "cost.png"
    result = runner.invoke(
        app,
        [
            "bench",
            "--model",
            "tiny",
            "--size",
            "64",
            "--size",
            "128",
            "--compare",
            "osediff",
            "--json",
            str(js),
            "--plot",
            str(png),
            "--device",
            "cpu",
            "--warmup",
            "0",
            "--repeats",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    reports = json.loads(js.read_text())
    assert isinstance(reports, list) and [r["size"] for r in reports] == [64, 128]
    for r in reports:
        assert {"size", "batch_size", "device", "parts", "end_to_end", "compare"} <= r.keys()
        assert r["batch_size"] == 1 and r["device"].startswith("cpu")
        assert set(r["parts"]) == {"vae_encode", "text_encoder", "transformer", "vae_decode"}
        for entry in [*r["parts"].values(), r["end_to_end"]]:
            assert set(entry) == PART_KEYS
            assert isinstance(entry["params"], int) and isinstance(entry["macs"], int) and entry["macs"] > 0
            assert entry["latency_ms"] > 0 and entry["peak_memory_mb"] is None  # tiny: timed on CPU; no CUDA
        ose = r["compare"]["osediff"]
        assert {"size", "batch_size", "device", "parts", "end_to_end"} <= ose.keys()
        assert set(ose["parts"]) == set(r["parts"]) and set(ose["end_to_end"]) == PART_KEYS
        assert ose["end_to_end"]["latency_ms"] is None and "not measured" in ose["notes"]["latency"]
        assert ose["ratios"]["end_to_end"]["macs"] == pytest.approx(ose["end_to_end"]["macs"] / r["end_to_end"]["macs"])
    # Cost grows with resolution (the tiny DiT is linear attention; VAEs are convolutional: ~4x for 2x size).
    assert reports[1]["end_to_end"]["macs"] / reports[0]["end_to_end"]["macs"] == pytest.approx(4, rel=0.1)
    assert reports[0]["parts"]["text_encoder"]["macs"] == reports[1]["parts"]["text_encoder"]["macs"]
    assert "not measured" in result.output and "osediff" in result.output
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600
    one = runner.invoke(app, ["bench", "--model", "tiny", "--size", "64", "--latency", "off", "--json", "-"])
    assert one.exit_code == 0
    doc = json.loads(one.stdout)
    assert isinstance(doc, dict) and doc["compare"] == {} and doc["end_to_end"]["latency_ms"] is None


def test_model_dir_is_measured_as_it_is(fresh_tiny_model, tmp_path):
    """A model directory with its own (smaller) transformer and a LoRA adapter: both in params and MACs."""
    from diffusers import SanaTransformer2DModel

    from sanasr_cli.models.lora import add_lora, lora_config
    from sanasr_cli.models.sanasr import save_model_dir

    cfg = dict(fresh_tiny_model.transformer.config)
    cfg["num_layers"] = 2
    small = SanaTransformer2DModel.from_config(cfg)
    fresh_tiny_model.restorer.transformer = small
    add_lora(small, lora_config(rank=4, alpha=4))
    save_model_dir(fresh_tiny_model, tmp_path / "m")
    (full,) = run_bench("tiny", BenchOptions(sizes=(64,), latency="off"))
    (mine,) = run_bench(str(tmp_path / "m"), BenchOptions(sizes=(64,), latency="off"))
    assert mine["parts"]["transformer"]["params"] == sum(p.numel() for p in small.parameters())
    assert mine["parts"]["transformer"]["macs"] < full["parts"]["transformer"]["macs"]
    assert mine["parts"]["vae_encode"] == full["parts"]["vae_encode"]


def test_batch_size_scales_every_part():
    one, two = (run_bench("tiny", BenchOptions(sizes=(64,), batch_size=b, latency="off"))[0] for b in (1, 2))
    assert two["batch_size"] == 2
    for part in ("vae_encode", "text_encoder", "transformer", "vae_decode"):
        assert two["parts"][part]["macs"] == 2 * one["parts"][part]["macs"]
        assert two["parts"][part]["params"] == one["parts"][part]["params"]


def test_bad_input_is_one_line_exit_2():
    for args, expected in (
        (["--size", "100"], "not a multiple of 8"),
        (["--compare", "stablesr"], "unknown --compare stablesr; known: osediff, full-prompt"),
        (["--latency", "sometimes"], "--latency must be auto, on or off"),
        (["--model", "no/such/dir"], "neither a preset"),
    ):
        result = runner.invoke(app, ["bench", "--model", "tiny", "--latency", "off", *args])
        assert result.exit_code == 2, (args, result.output)
        assert expected in " ".join(result.output.split()) and "Traceback" not in result.output


def test_tagger_cost_is_its_own_line(tmp_path):
    """--tagger clip adds the tagger's params and MACs (counted on meta, like every part) to each size's report."""
    from sanasr_cli.prompts.clip_tagger import clip_image_macs

    js = tmp_path / "t.json"
    args = ["bench", "--model", "tiny", "--size", "64", "--size", "128", "--latency", "off", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--tagger", "clip", "--batch-size", "2", "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "tagger (clip" in result.output
    reports = json.loads(js.read_text())
    taggers = [r["tagger"] for r in reports]
    assert taggers[0] == taggers[1]  # once per input image: independent of the output size
    assert taggers[0]["macs"] == 2 * clip_image_macs()
    assert 150e6 < taggers[0]["params"] < 153e6 and 87e6 < taggers[0]["image_params"] < 89e6
    assert taggers[0]["latency_ms"] is None and "latency not measured" in taggers[0]["note"]
    assert set(reports[0]["parts"]) == {"vae_encode", "text_encoder", "transformer", "vae_decode"}
    assert runner.invoke(app, [*args, "--json", str(tmp_path / "p.json")]).exit_code == 0
    assert "tagger" not in json.loads((tmp_path / "p.json").read_text())[0]
    bad = runner.invoke(app, [*args, "--tagger", "dape"])
    assert bad.exit_code == 2 and "clip tagger only" in bad.output


def test_paired_latency_full_prompt_on_tiny(tmp_path):
    """--compare full-prompt on the tiny model: both timed in the same interleaved rounds, ratios per round."""
    from sanasr_cli.evaluation.bench import paired_ratio

    js = tmp_path / "p.json"
    args = ["bench", "--model", "tiny", "--size", "64", "--compare", "full-prompt", "--latency", "on"]
    result = runner.invoke(app, [*args, "--warmup", "1", "--repeats", "3", "--device", "cpu", "--json", str(js)])
    assert result.exit_code == 0, result.output
    r = json.loads(js.read_text())
    full = r["compare"]["full-prompt"]
    assert full["parts"]["text_encoder"]["macs"] > r["parts"]["text_encoder"]["macs"]
    assert full["parts"]["transformer"]["macs"] > r["parts"]["transformer"]["macs"]
    assert full["parts"]["vae_decode"] == r["parts"]["vae_decode"] | {
        "latency_ms": full["parts"]["vae_decode"]["latency_ms"]
    }  # same modules, same cost
    for part in ("text_encoder", "transformer", "end_to_end"):
        assert full["ratios"][part]["latency_ms"] > 0
    assert r["once"]["text_encoder_prefix"]["latency_ms"] > 0 and isinstance(r["warnings"], list)
    assert "round 3/3, sanasr / full-prompt interleaved" in result.output  # progress (stderr)
    assert "full-prompt/ours" in result.output
    assert paired_ratio([1.0, 2.0, 4.0], [2.0, 2.0, 2.0]) == 1.0  # median of 2, 1, 0.5; ratio of medians: 1
    assert paired_ratio([1.0, 10.0, 1.0], [3.0, 10.0, 3.0]) == 3.0  # one slow round shared by both drops out


def test_end_to_end_against_sum_of_parts_warning():
    from sanasr_cli.evaluation.bench import PipelineCost, sum_of_parts_warning
    from sanasr_cli.evaluation.peers import END_TO_END_PARTS as END

    def cost(e2e, parts):
        c = PipelineCost(end_to_end={"latency_ms": e2e})
        c.parts = {p: {"latency_ms": v} for p, v in zip(END, parts, strict=True)}
        c.parts["text_encoder"] = {"latency_ms": 1000.0}  # not part of end_to_end
        return c

    assert sum_of_parts_warning("x", cost(2260.0, (380.0, 970.0, 910.0))) is None
    w = sum_of_parts_warning("osediff", cost(4640.0, (380.0, 970.0, 910.0)))
    assert "osediff" in w and "4640.0" in w and "2260.0" in w
    assert sum_of_parts_warning("x", cost(None, (1.0, 1.0, 1.0))) is None
