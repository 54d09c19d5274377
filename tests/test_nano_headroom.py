"""experiments/nano_headroom.py's `filters` probe cannot rot: run on the three shipped held-out CI pairs, its bicubic
baseline is the one nano_quality.py scored with pyiqa when nano was shipped, and its oracle is the best of its
filters for each image.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO_ROOT
from tests.helpers import NANO_V1_PAIRS as PAIRS
from tests.helpers import experiment_module


@pytest.fixture(scope="module")
def headroom():
    return experiment_module("nano_headroom")


@pytest.mark.numerics
def test_filters_probe_scores_like_nano_quality(headroom, tmp_path):
    out = tmp_path / "headroom.json"
    entry = headroom.main(["filters", "--pairs", str(PAIRS), "--out", str(out)])

    assert json.loads(out.read_text())[-1]["probe"] == "filters"
    shipped = json.loads((REPO_ROOT / "benchmarks" / "results" / "nano_quality.json").read_text())["ci_pairs"]
    pyiqa_bicubic = {r["image"]: r["bicubic_psnr_y"] for r in shipped["images"]}
    rows = {r["image"]: r for r in entry["images"]}
    assert set(rows) == set(pyiqa_bicubic) == {"chelsea", "coffee", "flower"}
    for name, row in rows.items():
        assert row["bicubic"] == pytest.approx(pyiqa_bicubic[name], abs=0.01)  # same bicubic, same Y-PSNR as pyiqa
        assert set(row["gains"]) == set(headroom.FILTERS)
        assert row["oracle_gain"] == max(row["gains"].values()) == row["gains"][row["oracle"]]
    # the filters do change the image: a strong denoiser moves every crop by more than 0.05 dB one way or the other
    assert all(abs(r["gains"]["nlm15"]) > 0.05 for r in rows.values())
    gains = sorted(r["oracle_gain"] for r in rows.values())
    assert entry["oracle_median_gain_db"] == pytest.approx(gains[1], abs=1e-9)


def test_classical_upsamples_by_four(headroom):
    import numpy as np

    lq = (np.random.default_rng(0).random((8, 12, 3)) * 255).astype(np.uint8)
    for name in (*headroom.FILTERS, "bicubic"):
        out = headroom.classical(name, lq)
        assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError):
        headroom.classical("median", lq)


def test_blur_probe_on_classical_bicubic_pairs(headroom):
    """The `blur` probe on the classical setting (bicubic x1/4 only, nothing to denoise): every blur loses, on the
    training crops and on the held-out crops alike, and more the stronger it is."""
    pairs = headroom.Pairs("bicubic", copies=1)
    out = headroom.probe_blur(pairs, crops=16)
    assert out["train"]["crops"] == 16 and out["validation"]["crops"] == 24
    for split in ("train", "validation"):
        gains = [out[split][f"blur{s}"]["median_gain_db"] for s in (0.8, 1.2, 2.0)]
        assert gains[0] < 0 and gains[0] > gains[1] > gains[2], (split, gains)
