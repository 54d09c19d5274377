"""Offline NIQE and BRISQUE (sanasr_cli/evaluation/nr_metrics.py, parameters in nr_params/) against their upstream
references, their shipped parameters and their place in `sanasr eval`."""

from __future__ import annotations

import functools
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from sanasr_cli.evaluation.metrics import METRICS, ProtocolError, build_metric, evaluate_pairs, parse_metrics
from sanasr_cli.evaluation.nr_metrics import BRISQUE, MIN_SIZE, NIQE, PARAMS_DIR, brisque_features, load_params
from sanasr_cli.evaluation.pairing import pair_folders
from tests.helpers import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
NIQE_MIN = 192


def _example(kind: str, stem: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / kind / f"{stem}.png").convert("RGB"))


def _mosaic() -> np.ndarray:
    """The four 256 px HQ examples as one 512x512 photo: 16 NIQE blocks instead of 4."""
    a, b, c, d = (_example("hq", s) for s in ("astronaut", "cat", "coffee", "motorcycle"))
    return np.vstack([np.hstack([a, b]), np.hstack([c, d])])


def _blocky() -> np.ndarray:
    """The mosaic averaged over 2x2 pixels (integer arithmetic) and repeated back: a degraded, exact image."""
    m = _mosaic().astype(np.int32)
    avg = (m[0::2, 0::2] + m[1::2, 0::2] + m[0::2, 1::2] + m[1::2, 1::2] + 2) // 4
    return np.repeat(np.repeat(avg, 2, axis=0), 2, axis=1).astype(np.uint8)


STEMS = ("astronaut", "cat", "coffee", "motorcycle")
TEST_IMAGES = {
    **{f"hq/{s}": (lambda s=s: _example("hq", s)) for s in STEMS},
    **{f"lq/{s}": (lambda s=s: _example("lq", s)) for s in STEMS},
    "mosaic": _mosaic,
    "mosaic_blocky": _blocky,
}
# benchmarks/nr_metrics_reference.py: BasicSR 1.4.2's numpy NIQE and the brisque 0.2.0 package (with libsvm)
REFERENCE_FILE = REPO_ROOT / "tests" / "data" / "nr_metrics_reference.json"


@functools.cache
def reference() -> dict:
    return json.loads(REFERENCE_FILE.read_text())["values"]


# measured: ours vs the references, max 6.7e-4 relative (NIQE), 1.5e-6 absolute (BRISQUE) on these images; a wrong
# parameter or feature moves them by far more (test_the_tolerances_catch_a_wrong_parameter)
NIQE_RTOL = 3e-3
BRISQUE_ATOL = 0.02


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255


def _niqe_cases():
    return [n for n, v in reference().items() if "niqe" in v]


def test_reference_covers_the_test_images():
    assert set(reference()) == set(TEST_IMAGES)
    assert NIQE_MIN == MIN_SIZE["niqe"] and len(_niqe_cases()) == 6
    for name, make in TEST_IMAGES.items():
        rgb = make()
        assert reference()[name]["size"] == [rgb.shape[1], rgb.shape[0]], name


@pytest.mark.numerics
def test_niqe_equals_basicsrs_matlab_checked_niqe():
    niqe = NIQE()
    scores = {}
    for name in _niqe_cases():
        scores[name] = float(niqe(_tensor(TEST_IMAGES[name]())))
        assert scores[name] == pytest.approx(reference()[name]["niqe"], rel=NIQE_RTOL), name
    assert scores["mosaic_blocky"] > scores["mosaic"] + 1  # the degraded copy is clearly less natural


@pytest.mark.numerics
def test_brisque_equals_the_brisque_packages_prediction():
    brisque = BRISQUE()
    batch = torch.cat([_tensor(TEST_IMAGES[f"hq/{s}"]()) for s in STEMS])
    assert batch.shape[0] == 4
    for name, score in zip((f"hq/{s}" for s in STEMS), brisque(batch).tolist(), strict=True):
        assert score == pytest.approx(reference()[name]["brisque"], abs=BRISQUE_ATOL), name
    for name in [n for n in TEST_IMAGES if not n.startswith("hq/")]:
        score = float(brisque(_tensor(TEST_IMAGES[name]())))
        assert score == pytest.approx(reference()[name]["brisque"], abs=BRISQUE_ATOL), name


def _swap_scales(v: torch.Tensor) -> torch.Tensor:
    return torch.cat([v[18:], v[:18]])


@pytest.mark.numerics
def test_the_tolerances_catch_a_wrong_parameter():
    """Each wrong model moves at least one test image outside the tolerance the tests above allow."""
    from pyiqa.archs.niqe_arch import calculate_niqe

    niqe = NIQE()
    mu, cov = niqe.mu_pris_param, niqe.cov_pris_param
    wrong_niqe = {
        "scales swapped in mu": (_swap_scales(mu), cov, "yiq"),
        "covariance scaled by 1.05": (mu, cov * 1.05, "yiq"),
        "Y of YCbCr instead of YIQ": (mu, cov, "ycbcr"),
    }
    images = {n: _tensor(TEST_IMAGES[n]()) for n in _niqe_cases() if n.startswith("hq/")}
    for what, (m, c, space) in wrong_niqe.items():
        off = [
            abs(float(calculate_niqe(x, 0, True, space, m, c)) / reference()[n]["niqe"] - 1) for n, x in images.items()
        ]
        assert max(off) > 3 * NIQE_RTOL, what

    features = {n: brisque_features(TEST_IMAGES[n]() / 255.0) for n in TEST_IMAGES if not n.startswith("mosaic")}

    def brisque_off(model: BRISQUE, feats: dict) -> float:
        return max(abs(model.predict(f) - reference()[n]["brisque"]) for n, f in feats.items())

    assert brisque_off(BRISQUE(), features) < BRISQUE_ATOL
    for what, change in {
        "gamma 0.1": lambda b: setattr(b, "gamma", 0.1),
        "rho negated": lambda b: setattr(b, "rho", -b.rho),
        "feature max from another feature": lambda b: setattr(b, "feature_max", np.roll(b.feature_max, 1)),
        "coefficients in another order": lambda b: setattr(b, "coefficients", b.coefficients[::-1].copy()),
    }.items():
        model = BRISQUE()
        change(model)
        assert brisque_off(model, features) > 10 * BRISQUE_ATOL, what
    # BGR read as RGB (OpenCV's order): the grey weights land on the wrong channels
    bgr = {n: brisque_features(TEST_IMAGES[n]()[..., ::-1] / 255.0) for n in ("hq/astronaut", "lq/coffee")}
    assert brisque_off(BRISQUE(), bgr) > 10 * BRISQUE_ATOL


def test_shipped_parameters_are_the_recipes_output():
    """The files in nr_params/ are byte for byte what `python -m recipes.nr_params` makes from the pinned archives
    (it checks them against OUTPUT_SHA256), and they hold the models they claim."""
    import hashlib

    from recipes.nr_params import BASICSR, OUTPUT_SHA256
    from recipes.nr_params import BRISQUE as BRISQUE_SOURCE

    for name, expected in OUTPUT_SHA256.items():
        assert hashlib.sha256((PARAMS_DIR / name).read_bytes()).hexdigest() == expected, name
    niqe = load_params("niqe_pristine.json")
    assert niqe["source"]["archive_sha256"] == BASICSR["archive_sha256"] and niqe["source"]["license"] == "Apache-2.0"
    mu, cov = np.array(niqe["mu_pris_param"]), np.array(niqe["cov_pris_param"])
    assert mu.shape == (36,) and cov.shape == (36, 36) and np.allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > -1e-12  # a covariance
    svr = load_params("brisque_svr.json")
    assert svr["source"]["archive_sha256"] == BRISQUE_SOURCE["archive_sha256"]
    assert (svr["svm_type"], svr["kernel_type"], svr["gamma"], svr["rho"]) == ("epsilon_svr", "rbf", 0.05, -155.845)
    assert np.array(svr["support_vectors"]).shape == (770, 36) and len(svr["coefficients"]) == 770
    assert all(lo < hi for lo, hi in zip(svr["feature_min"], svr["feature_max"], strict=True))
    assert "Apache License" in (PARAMS_DIR / "LICENSE-brisque.txt").read_text()


def test_recipe_reads_libsvm_text_and_refuses_pickled_code(tmp_path):
    from recipes.nr_params import feature_ranges_from_pickle, svr_from_libsvm_text

    header = "svm_type epsilon_svr\nkernel_type rbf\ngamma 0.5\nnr_class 2\ntotal_sv 2\nrho -1.5\nSV\n"
    model = svr_from_libsvm_text(header + "2 1:0.5 3:-1\n-0.25 36:1\n")
    assert model["gamma"] == 0.5 and model["rho"] == -1.5 and model["coefficients"] == [2.0, -0.25]
    assert model["support_vectors"][0][:3] == [0.5, 0.0, -1.0] and model["support_vectors"][1][35] == 1.0
    assert sum(model["support_vectors"][1]) == 1.0  # omitted features are zeros
    with pytest.raises(SystemExit, match="2 support vectors, the header says 3"):
        svr_from_libsvm_text(header.replace("total_sv 2", "total_sv 3") + "2 1:0.5\n-0.25 36:1\n")
    plain = {"min_": [float(i) for i in range(36)], "max_": [i + 1.0 for i in range(36)]}
    assert feature_ranges_from_pickle(pickle.dumps(plain))["feature_max"][35] == 36.0
    with pytest.raises(pickle.UnpicklingError, match="refused: the pickle names posix.getcwd|refused: .*getcwd"):
        feature_ranges_from_pickle(pickle.dumps({"min_": os.getcwd, "max_": []}))
    with pytest.raises(SystemExit, match="not a list of 36"):
        feature_ranges_from_pickle(pickle.dumps({"min_": [1.0], "max_": [2.0]}))


@pytest.fixture
def no_downloads(monkeypatch):
    """Any download pyiqa would start fails the test: the offline metrics must not need one."""
    import pyiqa.utils.download_util as download_util

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(download_util, "load_file_from_url", refuse)
    monkeypatch.setattr(download_util, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.numerics
def test_eval_scores_niqe_and_brisque_offline_as_the_references(no_downloads):
    specs = parse_metrics("niqe,brisque", need_reference=False)
    assert [s.variant for s in specs] == [METRICS["niqe"].variant, METRICS["brisque"].variant]
    assert "BasicSR 1.4.2" in specs[0].variant and "brisque 0.2.0" in specs[1].variant
    assert all(not s.needs_weights for s in specs)
    result = evaluate_pairs(pair_folders(EXAMPLES / "hq", None), specs)
    assert result.ok and [s.key for s in result.images] == list(STEMS)
    for s in result.images:
        ref = reference()[f"hq/{s.key}"]
        assert s.values["niqe"] == pytest.approx(ref["niqe"], rel=NIQE_RTOL)
        assert s.values["brisque"] == pytest.approx(ref["brisque"], abs=BRISQUE_ATOL)


def test_eval_refuses_images_too_small_for_a_metric_in_one_error(tmp_path):
    lq = pair_folders(EXAMPLES / "lq", None)
    with pytest.raises(ProtocolError) as err:
        evaluate_pairs(lq, parse_metrics("brisque,niqe", need_reference=False))
    message = str(err.value)
    assert "niqe needs images of at least 192x192 px, 4 are smaller (astronaut.png 64x64" in message
    assert "brisque" not in message.split(" - ")[0] and "\n" not in message
    assert evaluate_pairs(lq, parse_metrics("brisque", need_reference=False)).ok  # 64 px is enough for BRISQUE
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.fromarray(_example("lq", "cat")[:31]).save(tiny / "a.png")
    with pytest.raises(ProtocolError, match="brisque needs images of at least 32x32 px, 1 are smaller"):
        evaluate_pairs(pair_folders(tiny, None), parse_metrics("brisque", need_reference=False))
    # under the patch protocol every image is 256x256: NIQE's 192 px fits
    hq = pair_folders(EXAMPLES / "hq", EXAMPLES / "hq")
    assert evaluate_pairs(hq, parse_metrics("niqe"), protocol="patch").ok


def test_eval_notes_images_under_a_metrics_stable_size(tmp_path, no_downloads):
    (tmp_path / "big").mkdir()
    Image.fromarray(_mosaic()).save(tmp_path / "big" / "mosaic.png")
    Image.fromarray(_example("hq", "cat")).save(tmp_path / "big" / "cat.png")
    result = evaluate_pairs(pair_folders(tmp_path / "big", None), parse_metrics("niqe"))
    assert result.notes == [
        "niqe: 1 of 2 image(s) scored under 384x384 px, where one image's score moves with the crop; compare "
        "medians over many images (docs/eval-bench.md)"
    ]
    (tmp_path / "big" / "cat.png").unlink()
    assert evaluate_pairs(pair_folders(tmp_path / "big", None), parse_metrics("niqe,brisque")).notes == []
    hq = pair_folders(EXAMPLES / "hq", None)
    assert [n.split(":")[0] for n in evaluate_pairs(hq, parse_metrics("brisque")).notes] == ["brisque"]


def test_a_damaged_install_is_one_message(monkeypatch, tmp_path):
    from sanasr_cli.evaluation import nr_metrics
    from sanasr_cli.evaluation.metrics import MetricUnavailable

    monkeypatch.setattr(nr_metrics, "PARAMS_DIR", tmp_path)
    nr_metrics.load_params.cache_clear()
    try:
        with pytest.raises(MetricUnavailable, match="'niqe': its shipped parameters could not be read.*reinstall"):
            build_metric(METRICS["niqe"])
    finally:
        nr_metrics.load_params.cache_clear()
