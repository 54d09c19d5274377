"""Issue 24: `sanasr export nano --quantize int8` keeps nano's quality: on the eight shipped CI pairs
(tests/data/nano_heldout) its Y-PSNR stays within a tolerance of PyTorch nano's, and a quantization whose weight
scales are off by 10% fails the same tolerance. On nano v2's 200 evaluation pairs the measured difference is in
docs/export.md (benchmarks/onnx_quality.py)."""

from __future__ import annotations

import shutil
import statistics

import numpy as np
import pytest
import torch

from tests.helpers import NANO_HELDOUT_PAIRS

# skipped only where the onnx extra is not installed: an installed one that fails to import fails the file
onnx = pytest.importorskip("onnx", exc_type=ModuleNotFoundError)
pytest.importorskip("onnxruntime", exc_type=ModuleNotFoundError)
pytest.importorskip("onnxscript", exc_type=ModuleNotFoundError)

# Measured here (2-core x86-64 with AVX512-VNNI, ONNX Runtime 1.32): int8 minus PyTorch, median +0.0006 dB, worst
# pair 0.027 dB. Another CPU's int8 kernels round differently (hence 10x that). The restorer's weight scales off by
# 5%: median -0.063 dB, worst pair 0.43 dB; by 10% (the test below): -0.18 dB and 1.03 dB.
MEDIAN_TOLERANCE_DB = 0.05
PAIR_TOLERANCE_DB = 0.25


@pytest.fixture(scope="module")
def nano():
    from sanasr_cli.models.sanasr import load_model

    return load_model("nano")


@pytest.fixture(scope="module")
def nano_int8(nano, tmp_path_factory):
    from sanasr_cli.export.onnx_export import export_onnx

    return export_onnx(nano, tmp_path_factory.mktemp("int8") / "nano-int8", source="nano", quantize="int8").folder


@pytest.fixture(scope="module")
def nano_scores(nano) -> list[float]:
    """PyTorch nano's Y-PSNR on each CI pair: the reference both tests compare with (computed once)."""
    return _psnr_y(nano)


def _psnr_y(model) -> list[float]:
    """Y-PSNR (pyiqa, as `sanasr eval`) of `model` on each CI pair, upscale's path without colour fix, 8-bit."""
    from sanasr_cli.data.io import read_image
    from sanasr_cli.evaluation.metrics import METRICS, build_metric
    from sanasr_cli.pipeline.upscale import upscale_tensor

    psnr = build_metric(METRICS["psnr"])
    prompt = model.description.prompt.template
    out = []
    for lq_path in sorted((NANO_HELDOUT_PAIRS / "lq").glob("*.png")):
        lq, hq = read_image(lq_path)[0], read_image(NANO_HELDOUT_PAIRS / "hq" / lq_path.name)[0][None]
        with torch.no_grad():
            sr = upscale_tensor(model, lq, prompt, color_fix="none", tile="none")[None]
        out.append(float(psnr((sr.clamp(0, 1) * 255).round() / 255, hq)))
    return out


def _within(scores: list[float], reference: list[float]) -> tuple[bool, str]:
    diff = [a - b for a, b in zip(scores, reference, strict=True)]
    median = statistics.median(scores) - statistics.median(reference)
    worst = max(abs(d) for d in diff)
    ok = abs(median) < MEDIAN_TOLERANCE_DB and worst < PAIR_TOLERANCE_DB
    return ok, f"median {median:+.4f} dB, worst pair {worst:.4f} dB"


@pytest.mark.numerics
def test_int8_nano_stays_within_tolerance_of_pytorch(nano_scores, nano_int8):
    from sanasr_cli.models.onnx_backend import load_onnx_model

    int8 = load_onnx_model(nano_int8)
    assert int8.contract["quantization"]["mode"] == "int8" and set(int8.contract["quantization"]["stages"]) == {
        "encoder", "restorer", "decoder"
    }  # fmt: skip
    graph = onnx.load(str(nano_int8 / "restorer.onnx")).graph
    weights = {i.name for i in graph.initializer}
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) >= 40
    # every Linear of the LinearDiT is int8: no MatMul reads a weight (those left multiply activations)
    assert not [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and set(n.input) & weights]
    ok, how = _within(_psnr_y(int8), nano_scores)
    assert ok, how


@pytest.mark.numerics
def test_weight_scales_off_by_ten_percent_fail_the_tolerance(nano_scores, nano_int8, tmp_path):
    """The tolerance is tight enough to catch a broken quantization: the restorer's weight scales x 1.1."""
    from onnx import numpy_helper

    from sanasr_cli.models.onnx_backend import load_onnx_model

    broken = tmp_path / "broken"
    shutil.copytree(nano_int8, broken)
    model = onnx.load(str(broken / "restorer.onnx"))
    scaled = 0
    for init in model.graph.initializer:  # activations' scales are computed per call, not initializers
        if init.name.endswith("_scale"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.1), init.name))
            scaled += 1
    assert scaled >= 20
    onnx.save(model, str(broken / "restorer.onnx"))
    ok, how = _within(_psnr_y(load_onnx_model(broken)), nano_scores)
    assert not ok, how
