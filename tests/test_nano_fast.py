"""The shipped `nano-fast` (nano + distilled students of its DC-AE) and the real-size cost target of `distill`.

Measured by `python experiments/nano_fast.py --stage measure` into models/nano_fast/report.json: the issue asks for
nano-fast's median Y-PSNR gain over bicubic within 0.3 dB of nano's on the held-out photos, with encode + decode
MACs at least 4x lower. Here, on the three shipped held-out crops (tests/data/nano_heldout), both models are run
live: nano-fast's gain must stay within LOOSE_GAP_DB of nano's (looser than the issue's 0.3 dB), or, should the
measured gap already be wider, within 0.1 dB of what was measured. The CPU path is deterministic, so nano-fast
also reproduces its measured gain on the crops to 0.05 dB; when nano's SR transformer is retrained, rerun the
measure stage (that test says so).
"""

from __future__ import annotations

import json
import statistics

import pytest

from tests.test_nano import gains

TORCH_THREADS = 1
LOOSE_GAP_DB = 0.4  # the issue's 0.3 dB, loosened for CI
MACS_RATIO = 4.0  # the issue's requirement on encode + decode MACs (a count: no noise to loosen for)


def _report() -> dict:
    from sanasr_cli.models.presets import NANO_FAST_DIR

    return json.loads((NANO_FAST_DIR / "report.json").read_text())


@pytest.fixture(scope="module")
def metrics():
    from sanasr_cli.evaluation.metrics import METRICS, build_metric

    return build_metric(METRICS["psnr"]), build_metric(METRICS["ssim"])


@pytest.fixture(scope="module")
def models():
    from sanasr_cli.models.sanasr import load_model

    return load_model("nano"), load_model("nano-fast")


def test_nano_fast_is_nano_plus_small_shipped_students():
    from sanasr_cli.models.presets import NANO_DIR, NANO_FAST_DIR
    from sanasr_cli.models.sanasr import resolve_model

    desc, folder = resolve_model("nano-fast")
    assert folder == NANO_DIR / "sr" and desc.base_source == "shipped:nano"  # nano's transformer and base
    assert desc.encoder == "shipped:nano_fast/encoder" and desc.decoder == "shipped:nano_fast/decoder"
    total = sum(p.stat().st_size for p in NANO_FAST_DIR.rglob("*") if p.is_file())
    assert total < 2 * 2**20


def test_encode_decode_macs_are_at_least_4x_lower_than_nanos():
    from tests.helpers import experiment_module

    codec_macs = experiment_module("nano_fast").codec_macs

    nano, fast = codec_macs("nano"), codec_macs("nano-fast")
    ratio = nano["encode_decode_gmacs"] / fast["encode_decode_gmacs"]
    assert ratio >= MACS_RATIO
    assert abs(ratio - _report()["summary"]["encode_decode_macs_ratio"]) < 1e-2  # the model card's number


@pytest.mark.numerics
def test_nano_fast_keeps_nanos_gain_on_heldout_crops(models, metrics):
    nano, fast = models
    g_nano = statistics.median(g for g, _ in gains(nano, metrics))
    g_fast = statistics.median(g for g, _ in gains(fast, metrics))
    summary = _report()["summary"]
    allowed = max(LOOSE_GAP_DB, -summary["ci_gain_gap_db"] + 0.1)
    assert g_fast >= g_nano - allowed, f"nano-fast {g_fast:+.2f} dB vs nano {g_nano:+.2f} dB (allowed {allowed} dB)"
    assert abs(g_fast - summary["nano_fast_ci_gain_db"]) < 0.05, (
        "nano-fast no longer reproduces its measured gain: was nano retrained? rerun "
        "`python experiments/nano_fast.py --stage measure` (and the decoder stage if the gap widened)"
    )


def test_heldout_measurement_meets_the_issue():
    """The held-out measurement in the model card: within 0.3 dB of nano's gain, 4x fewer MACs."""
    s = _report()["summary"]
    assert s["gain_gap_db"] >= -0.3 and s["encode_decode_macs_ratio"] >= 4


@pytest.mark.numerics
def test_nano_fast_tiles_like_the_whole_image(models):
    """The student encoder tiles in LQ pixels on nano's latent grid: tiled and whole outputs agree (on the CI
    crop of skimage's coffee: 28.0 / 30.3 dB at tiles 48 / 64, nano 36.3 / 37.9; a broken tile plan is far below)."""
    from tests.helpers import assert_tiles_like_the_whole_image

    assert_tiles_like_the_whole_image(models[1], min_psnr=26.0)


def test_sana_fast_preset_costs_at_most_500_gmacs_at_512():
    """Counted on meta as `sanasr bench --model sana-600m-512-fast` counts: SANA-600M pruned to 16 blocks
    (0.35B) with the student encoder / decoder shapes, end to end (encode + transformer + decode)."""
    from sanasr_cli.evaluation.bench import build_sanasr, measure_macs, sana_pipeline

    model = build_sanasr("sana-600m-512-fast", "meta", random_weights=True)
    assert sum(p.numel() for p in model.transformer.parameters()) <= 0.35e9
    cost = measure_macs(sana_pipeline(model), 512, 1)
    assert cost.end_to_end["macs"] <= 500e9
    assert cost.parts["vae_encode"]["params"] == sum(p.numel() for p in model.codec.lq_encoder.parameters())
