"""experiments/nano_ablations.py cannot rot: one cell (Fisher pruning, 2 calibration steps) through the script's own
code path on the tiny preset, scored on the nano CI pairs exactly as nano_quality.py scored them; a rerun skips it.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import NANO_V1_PAIRS as PAIRS
from tests.helpers import experiment_module

TORCH_THREADS = 1


@pytest.fixture(scope="module")
def ablations():
    return experiment_module("nano_ablations")


@pytest.mark.numerics
def test_one_cell_scored_like_nano_quality_then_skipped(ablations, tmp_path):
    out = tmp_path / "ablations.json"
    argv = ["--model", "tiny", "--pairs", str(PAIRS), "--cells", "prune/fisher", "--calib-steps", "2",
            "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    results = ablations.main(argv)

    cells = results["cells"]
    assert set(cells) == {"reference/bicubic", "reference/full", "prune/fisher"}
    fisher, bicubic, full = cells["prune/fisher"], cells["reference/bicubic"], cells["reference/full"]
    # tiny has 4 blocks: round(0.6 * 4) = 2 kept, the first and the last (Eq. 11), within the budget
    assert fisher["kept"] == [0, 3] and fisher["calibration_steps"] == 2
    assert fisher["params_after"] <= fisher["budget"] < fisher["params_before"]
    assert fisher["build_seconds"] > 0 and fisher["eval_seconds"] > 0
    # every cell on the same three images, beside the same bicubic; the pruned model is another model
    assert [r["image"] for r in fisher["images"]] == [r["image"] for r in bicubic["images"]] == [
        "chelsea", "coffee", "flower"
    ]  # fmt: skip
    assert fisher["bicubic_psnr_y"] == full["bicubic_psnr_y"] == bicubic["psnr_y"]
    assert fisher["psnr_y"] != full["psnr_y"]
    # scored as nano_quality.py scored these pairs when nano shipped (recipe_report.json: the same bicubic numbers,
    # stored rounded to 3 and 4 decimals; on another CPU a float rounding may flip that last digit)
    from sanasr_cli.models.presets import NANO_DIR

    shipped = json.loads((NANO_DIR / "recipe_report.json").read_text())["v1_ci_pairs"]["images"]  # nano v1's
    assert len(bicubic["images"]) == len(shipped)
    for ours, theirs in zip(bicubic["images"], shipped, strict=True):
        assert ours["bicubic_psnr_y"] == pytest.approx(theirs["bicubic_psnr_y"], abs=0.01), ours["image"]
        assert ours["bicubic_ssim"] == pytest.approx(theirs["bicubic_ssim"], abs=5e-4), ours["image"]
    # the held-out tags are written beside copies of the pairs, never into the test data
    assert (tmp_path / "work" / "pairs" / "lq" / "chelsea.txt").read_text().startswith("cat")
    assert not list(PAIRS.rglob("*.txt"))

    saved = json.loads(out.read_text())
    assert saved["cells"] == json.loads(json.dumps(cells))
    assert "| prune | fisher |" in saved["markdown"] and out.with_suffix(".md").read_text() == saved["markdown"]

    # resumable: a rerun finds every cell done and builds nothing
    model_dir = tmp_path / "work" / "models" / "prune_fisher"
    stamp = model_dir.stat().st_mtime_ns
    again = ablations.main(argv)
    assert again["cells"] == saved["cells"] and model_dir.stat().st_mtime_ns == stamp
    assert saved["cells"]["prune/fisher"]["settings"] == {"calib_steps": 2, "crop": 64}
    # another model, base, seed or set of pairs into the same JSON is refused, not mixed
    with pytest.raises(SystemExit, match="other settings"):
        ablations.main([*argv, "--seed", "1"])


def _cell(gain, kept=None):
    cell = dict(psnr_y=25.0 + gain, ssim=0.5, gain_psnr_y=gain, gain_ssim=0.0, build_seconds=1.0, eval_seconds=1.0)
    if kept:
        cell.update(kept=kept, params_after=4, params_before=6, calibration_steps=0)
    return cell


def test_verdicts_rank_by_the_median_gain_and_report_the_measured_ordering(ablations):
    results = {"seed": 0, "cells": {}}
    assert "not all cells measured yet" in ablations.verdict(results, "objective")
    results["cells"].update({
        "objective/full": _cell(-0.2), "objective/no-cons": _cell(-0.4), "objective/no-align": _cell(-0.6),
        "objective/pixel-only": _cell(-0.8),
    })  # fmt: skip
    assert "ordering holds" in ablations.verdict(results, "objective")
    results["cells"]["objective/no-align"] = _cell(0.1)
    text = ablations.verdict(results, "objective")
    assert "does not hold" in text and text.index("no-align (+0.10)") < text.index("full (-0.20)")
    # tau_g 900 and the template-only prompt are the full-objective run, listed again in their groups
    results["cells"].update({f"tau_g/{t}": _cell(v) for t, v in ((500, -1.0), (700, -0.5), (999, -0.1))})
    assert "ordering holds" in ablations.verdict(results, "tau_g")
    # pruning: random is the mean of its seeds; Fisher's place is named, and so are strategies that agree
    results["cells"].update({
        "prune/fisher": _cell(-0.3, [0, 3, 4, 5]), "prune/tail": _cell(-0.2, [0, 1, 2, 5]),
        "prune/magnitude": _cell(-0.3, [0, 3, 4, 5]),
        **{f"prune/random-seed{s}": _cell(-0.6 + 0.3 * s, [0, 1, 4, 5]) for s in (0, 1, 2)},
    })  # fmt: skip
    text = ablations.verdict(results, "prune")
    assert "random (-0.30)" in text and "does not hold" in text and "Fisher is not the best" in text
    assert "fisher and magnitude keep the same blocks" in text
    table = ablations.markdown(results)
    assert "| tau_g | 900 | 24.80 |" in table and "same run as objective/full" in table
    assert "kept blocks [0, 3, 4, 5]" in table
