"""`sanasr eval` through the real CLI: JSON/CSV schema, exit codes, the missing-weights message (offline,
simulated in a subprocess), end-to-end evaluation of a model and checkpoint ranking (tiny models)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image, ImageFilter

from sanasr_cli.cli import app
from tests.helpers import REPO_ROOT, TINY_TRAIN, child_env, photo_folder, runner

TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)


HQ = sorted((REPO_ROOT / "examples" / "hq").glob("*.png"))


@pytest.fixture
def folders(tmp_path):
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    sr.mkdir(), hr.mkdir()
    for f in HQ[:3]:
        im = Image.open(f).convert("RGB")
        im.save(hr / f.name)
        im.filter(ImageFilter.GaussianBlur(1.2)).save(sr / f"{f.stem}_sr.png")
    return sr, hr


def test_json_and_csv_schema(folders, tmp_path):
    sr, hr = folders
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    result = runner.invoke(
        app,
        [
            "eval",
            "--sr",
            str(sr),
            "--hr",
            str(hr),
            "--metrics",
            "psnr,ssim",
            "--protocol",
            "patch",
            "--json",
            str(js),
            "--csv",
            str(cs),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "psnry" in result.output and "centre crop" in result.output
    doc = json.loads(js.read_text())
    assert {
        "protocol",
        "protocol_description",
        "conversion",
        "metrics",
        "means",
        "num_images",
        "images",
        "versions",
        "model",
        "unavailable_metrics",
    } <= doc.keys()
    assert doc["protocol"] == "patch" and doc["num_images"] == 3 and doc["model"] is None
    assert doc["metrics"]["ssim"]["variant"] == "pyiqa.create_metric('ssim', color_space='ycbcr', downsample=False)"
    assert set(doc["versions"]) == {"sanasr", "torch", "pyiqa"} and doc["versions"]["torch"] == torch.__version__
    assert [i["key"] for i in doc["images"]] == [f.stem for f in HQ[:3]]
    for img in doc["images"]:
        assert set(img["values"]) == {"psnr", "ssim"} and img["error"] is None and img["sr_size"] == [256, 256]
    mean_psnr = sum(i["values"]["psnr"] for i in doc["images"]) / 3
    assert doc["means"]["psnr"] == pytest.approx(mean_psnr)
    to_stdout = runner.invoke(
        app,
        [
            "eval",
            "--sr",
            str(sr),
            "--hr",
            str(hr),
            "--metrics",
            "psnr,ssim",
            "--protocol",
            "patch",
            "--json",
            "-",
        ],
    )
    assert to_stdout.exit_code == 0 and json.loads(to_stdout.stdout)["means"] == doc["means"]
    rows = list(csv.DictReader(cs.open()))
    assert [r["key"] for r in rows] == [i["key"] for i in doc["images"]]
    assert float(rows[0]["psnr"]) == pytest.approx(doc["images"][0]["values"]["psnr"])


def test_usage_errors_are_one_line_with_exit_2(folders, tmp_path):
    sr, hr = folders
    cases = [
        (
            ["--sr", str(sr), "--hr", str(hr), "--metrics", "psnr,sharpness"],
            "unknown metric(s) sharpness; known: psnr",
        ),
        (["--sr", str(sr), "--hr", str(hr), "--protocol", "crop"], "unknown protocol 'crop'"),
        (["--sr", str(tmp_path / "nothing"), "--hr", str(hr)], "does not exist"),
        (["--sr", str(sr), "--metrics", "psnr,niqe"], "psnr need reference images (--hr)"),
        (["--hr", str(hr)], "give exactly one of"),
        (["--model", "tiny", "--hr", str(hr)], "--model needs --lq"),
        (["--peer", "realesrgan-x4plus", "--hr", str(hr)], "--peer needs --lq"),  # the flag given, named
        (["--model", "tiny", "--peer", "realesrgan-x4plus", "--hr", str(hr)], "--model/--peer needs --lq"),
    ]
    (sr / HQ[0].name.replace(".png", "_sr.png")).unlink()
    cases.append((["--sr", str(sr), "--hr", str(hr), "--metrics", "psnr"], f"without a sr partner: {HQ[0].name}"))
    for args, expected in cases:
        result = runner.invoke(app, ["eval", *args])
        assert result.exit_code == 2, (args, result.output)
        assert expected in " ".join(result.output.split()), (args, result.output)
        assert "Traceback" not in result.output


def test_an_unreadable_image_fails_alone_with_exit_1(folders, tmp_path):
    sr, hr = folders
    (sr / HQ[0].name).write_bytes(b"not an image")  # an unreadable file in place of the first output
    (sr / f"{HQ[0].stem}_sr.png").unlink()
    js = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", "--sr", str(sr), "--hr", str(hr), "--metrics", "psnr", "--json", str(js)])
    assert result.exit_code == 1, result.output
    assert "not a recognised image file" in result.output and "Traceback" not in result.output
    doc = json.loads(js.read_text())
    assert doc["num_images"] == 2 and [i["error"] is None for i in doc["images"]] == [False, True, True]
    assert doc["means"]["psnr"] == pytest.approx(sum(i["values"]["psnr"] for i in doc["images"][1:]) / 2)


def test_list_metrics_names_variants():
    result = runner.invoke(app, ["eval", "--list-metrics"])
    assert result.exit_code == 0
    for name in ("psnr", "ssim", "lpips", "dists", "niqe", "brisque", "musiq", "maniqa", "clipiqa"):
        assert name in result.output
    assert "psnry" in result.output
    out = " ".join(result.output.split())
    assert "nr_params/niqe_pristine.json" in out and "nr_params/brisque_svr.json" in out
    assert "Weights of all but psnr, ssim, niqe, brisque are downloaded by pyiqa" in out


def test_missing_weights_offline_names_file_and_folder_and_others_still_run(folders, tmp_path):
    """Offline simulated for real: an empty torch cache and every download sent to a closed local port. NIQE and
    BRISQUE run from the parameters sanasr ships; MUSIQ and CLIPIQA need downloaded weights."""
    sr, hr = folders
    torch_home = tmp_path / "torch-home"
    env = {
        **os.environ,
        "PYTHONPATH": child_env()["PYTHONPATH"],  # the network guard first (tests/conftest.py)
        "TORCH_HOME": str(torch_home),
        "HF_HUB_OFFLINE": "1",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "no_proxy": "",
    }
    js = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sanasr_cli",
            "eval",
            "--sr",
            str(sr),
            "--hr",
            str(hr),
            "--metrics",
            "psnr,niqe,brisque,musiq,clipiqa",
            "--json",
            str(js),
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    err = " ".join(proc.stderr.split())
    folder = torch_home / "hub" / "pyiqa"
    assert f"weights file musiq_koniq_ckpt-e95806b9.pth is not in {folder}" in err
    assert f"Put musiq_koniq_ckpt-e95806b9.pth into {folder}/" in err
    # CLIPIQA's CLIP weights come through pyiqa's own urllib loader, into another folder
    assert f"weights file RN50.pt is not in {torch_home / 'hub' / 'clip'}" in err
    assert "Traceback" not in proc.stderr
    doc = json.loads(js.read_text())
    assert set(doc["means"]) == {"psnr", "niqe", "brisque"} and doc["means"]["psnr"] > 15
    assert 0 < doc["means"]["niqe"] < 20 and -20 < doc["means"]["brisque"] < 100
    assert "musiq_koniq_ckpt-e95806b9.pth" in doc["unavailable_metrics"]["musiq"]
    assert [n.split(":")[0] for n in doc["notes"]] == ["niqe", "brisque"]  # 256 px: under their stable sizes
    assert "note: niqe: 3 of 3 image(s) scored under 384x384 px" in " ".join(proc.stdout.split() + err.split())
    assert "RN50.pt" in doc["unavailable_metrics"]["clipiqa"]
    assert not any(folder.glob("*"))  # nothing half-downloaded left behind


PROMPT_FLAGS = ["--template", "sharp, detailed", "--prompt", "a face", "--tag-cache", "off"]


def test_end_to_end_model_eval_reuses_upscale(tmp_path):
    lq, hr = tmp_path / "lq", tmp_path / "hr"
    lq.mkdir(), hr.mkdir()
    for f in HQ[:1]:
        Image.open(f).save(hr / f.name)
        Image.open(REPO_ROOT / "examples" / "lq" / f.name).save(lq / f"{f.stem}_lr.png")
    save, js = tmp_path / "out", tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "tiny",
            "--lq",
            str(lq),
            "--hr",
            str(hr),
            "--save-dir",
            str(save),
            "--metrics",
            "psnr,ssim",
            "--json",
            str(js),
            "--device",
            "cpu",
            *PROMPT_FLAGS,
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in save.glob("*.png")) == [f"{f.stem}_lr.png" for f in HQ[:1]]
    doc = json.loads(js.read_text())
    assert doc["model"]["spec"] == "tiny" and doc["model"]["description"]["base_preset"] == "tiny"
    assert doc["model"]["prompt_rule"]["template"] == "sharp, detailed" and doc["model"]["user_prompt"] == "a face"
    # The saved outputs are exactly what `sanasr upscale --color-fix none` writes for the same inputs (eval runs
    # the paper's pipeline: no colour fix by default; upscale's default wavelet fix gives other pixels), and
    # `eval --sr` on them gives the same scores.
    assert doc["model"]["color_fix"] == "none"
    for fix in ("none", "wavelet"):
        args = ["upscale", str(lq), "-o", str(tmp_path / fix), "--model", "tiny", "--device", "cpu"]
        up = runner.invoke(app, [*args, *PROMPT_FLAGS] + (["--color-fix", "none"] if fix == "none" else []))
        assert up.exit_code == 0, up.output
    for f in save.glob("*.png"):
        assert f.read_bytes() == (tmp_path / "none" / f.name).read_bytes()
        assert f.read_bytes() != (tmp_path / "wavelet" / f.name).read_bytes()
    again = runner.invoke(
        app,
        [
            "eval",
            "--sr",
            str(save),
            "--hr",
            str(hr),
            "--metrics",
            "psnr,ssim",
            "--json",
            str(tmp_path / "again.json"),
        ],
    )
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again.json").read_text())["means"] == doc["means"]
    # Outputs may never overwrite inputs.
    clash = runner.invoke(app, ["eval", "--model", "tiny", "--lq", str(lq), "--hr", str(hr), "--save-dir", str(lq)])
    assert clash.exit_code == 2 and "overlaps the input folder" in clash.output


def test_rank_checkpoints_scores_every_checkpoint_best_first(fresh_tiny_model, tmp_path):
    from sanasr_cli.models.sanasr import save_model_dir

    run = tmp_path / "run"
    weight = fresh_tiny_model.transformer.proj_out.weight
    original = weight.detach().clone()
    for step, scale in ((3, 0.0), (10, 1.0), (200, 4.0)):  # different transformers -> different outputs
        with torch.no_grad():
            weight.copy_(original * scale)
        save_model_dir(fresh_tiny_model, run / f"checkpoint-{step}")
    (run / "logs").mkdir()  # not a checkpoint: ignored
    lq, hr = tmp_path / "lq", tmp_path / "hr"
    lq.mkdir(), hr.mkdir()
    Image.open(HQ[0]).save(hr / HQ[0].name)
    Image.open(REPO_ROOT / "examples" / "lq" / HQ[0].name).save(lq / HQ[0].name)
    js, save = tmp_path / "rank.json", tmp_path / "outs"
    result = runner.invoke(
        app,
        [
            "eval",
            "--rank-checkpoints",
            str(run),
            "--lq",
            str(lq),
            "--hr",
            str(hr),
            "--metric",
            "psnr",
            "--save-dir",
            str(save),
            "--json",
            str(js),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(js.read_text())
    ranking = doc["ranking"]
    assert sorted(r["step"] for r in ranking) == [3, 10, 200] and [r["rank"] for r in ranking] == [1, 2, 3]
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 3  # PSNR: higher is better
    assert doc["variant"]["variant"] == "pyiqa.create_metric('psnry', color_space='ycbcr')"
    assert doc["color_fix"] == "none"  # checkpoints are ranked under the reporting pipeline (App. B)
    # The best score is the plain eval of that checkpoint's saved outputs.
    for r in ranking[:1]:
        again = runner.invoke(
            app,
            [
                "eval",
                "--sr",
                str(save / f"checkpoint-{r['step']}"),
                "--hr",
                str(hr),
                "--metrics",
                "psnr",
                "--json",
                str(tmp_path / "a.json"),
            ],
        )
        assert again.exit_code == 0
        assert json.loads((tmp_path / "a.json").read_text())["means"]["psnr"] == pytest.approx(r["score"])
    assert "checkpoint-200" in result.output
    bad = runner.invoke(app, ["eval", "--rank-checkpoints", str(tmp_path / "lq"), "--lq", str(lq)])
    assert bad.exit_code == 2 and "no checkpoint-<step>/ folders" in bad.output


def test_rank_checkpoints_of_a_real_training_run(tmp_path):
    """The checkpoints `sanasr train` writes (adapter/, adapter_ema/, train/ state) rank as they are."""
    hq = photo_folder(tmp_path / "hq", 2, (32, 32), prefix="t")
    run = tmp_path / "run"
    tiny = [*TINY_TRAIN, "--tag-cache", "off"]
    trained = runner.invoke(
        app, ["train", "--hq", str(hq), "-o", str(run), "--max-steps", "2", "--save-every", "1", *tiny]
    )
    assert trained.exit_code == 0, trained.output
    lq, hr = tmp_path / "lq", tmp_path / "hr"
    lq.mkdir(), hr.mkdir()
    Image.open(HQ[1]).save(hr / HQ[1].name)
    Image.open(REPO_ROOT / "examples" / "lq" / HQ[1].name).save(lq / HQ[1].name)
    js = tmp_path / "rank.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "--rank-checkpoints",
            str(run),
            "--lq",
            str(lq),
            "--hr",
            str(hr),
            "--metric",
            "ssim",
            "--json",
            str(js),
            "--device",
            "cpu",
            "--tag-cache",
            "off",
        ],
    )
    assert result.exit_code == 0, result.output
    ranking = json.loads(js.read_text())["ranking"]
    assert sorted(r["step"] for r in ranking) == [1, 2] and all(r["error"] is None for r in ranking)
    assert ranking[0]["score"] >= ranking[1]["score"]


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    """A real 3-step training run with checkpoint-1, -2 and -3, and a one-image validation set."""
    root = tmp_path_factory.mktemp("ranked")
    photo_folder(root / "hq", 2, (32, 32), prefix="t")
    tiny = [*TINY_TRAIN, "--tag-cache", "off", "--validation-images", "0", "--ema-decay", "0"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    trained = runner.invoke(
        app,
        [
            "train",
            "--hq",
            str(root / "hq"),
            "-o",
            str(root / "run"),
            "--max-steps",
            "3",
            "--save-every",
            "1",
            *tiny,
        ],  # fmt: skip
    )
    torch.set_num_threads(n)
    assert trained.exit_code == 0, trained.output
    (root / "lq").mkdir(), (root / "hr").mkdir()
    Image.open(HQ[1]).save(root / "hr" / HQ[1].name)
    Image.open(REPO_ROOT / "examples" / "lq" / HQ[1].name).save(root / "lq" / HQ[1].name)
    return root


def _break_adapter(ckpt):
    weights = ckpt / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])


@pytest.mark.parametrize(
    "damage, words",
    [
        (_break_adapter, "adapter"),
        (lambda c: (c / "adapter" / "adapter_model.safetensors").write_bytes(b"\xff" * 64), "adapter"),
        (lambda c: (c / "adapter" / "adapter_config.json").write_text('{"r": "wide"}'), "adapter"),
        (
            lambda c: (c / "adapter" / "adapter_config.json").write_text(
                (c / "adapter" / "adapter_config.json").read_text().replace('"r": 4', '"r": 8')
            ),
            "adapter",
        ),
        (lambda c: (c / "sanasr.json").write_text("[]"), "not a sanasr model description"),
        (lambda c: (c / "sanasr.json").write_text("{"), "sanasr.json"),
        (lambda c: (c / "sanasr.json").unlink(), "has no sanasr.json"),
        (lambda c: shutil.rmtree(c / "adapter"), "adapter"),
    ],
    ids=[
        "truncated_adapter",
        "corrupt_adapter",
        "bad_adapter_config",
        "other_rank",
        "array_description",
        "torn_description",
        "no_description",
        "no_adapter",
    ],  # fmt: skip
)
def test_rank_checkpoints_with_one_broken_checkpoint_ranks_the_others(three_checkpoints, tmp_path, damage, words):
    """That checkpoint's row fails with its reason (JSON and the console), the other two are ranked; exit 1
    (a failure during the work), one line per failure, no traceback."""
    run = tmp_path / "run"
    shutil.copytree(three_checkpoints / "run", run)
    damage(run / "checkpoint-2")
    js = tmp_path / "rank.json"
    result = runner.invoke(
        app,
        [
            "eval",
            "--rank-checkpoints",
            str(run),
            "--lq",
            str(three_checkpoints / "lq"),
            "--hr",
            str(three_checkpoints / "hr"),
            "--metric",
            "psnr",
            "--json",
            str(js),
            "--device",
            "cpu",
            "--tag-cache",
            "off",
        ],  # fmt: skip
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "bug in sanasr" not in result.output, result.output
    ranking = json.loads(js.read_text())["ranking"]
    by_step = {r["step"]: r for r in ranking}
    assert sorted(by_step) == [1, 2, 3], ranking
    assert [r["step"] for r in ranking if r["rank"]] in ([1, 3], [3, 1]) and [r["rank"] for r in ranking[:2]] == [1, 2]
    assert all(by_step[s]["score"] is not None and by_step[s]["error"] is None for s in (1, 3))
    broken = by_step[2]
    assert broken["rank"] is None and broken["score"] is None and words in broken["error"], broken
    failed_lines = [ln for ln in result.output.splitlines() if ln.startswith("failed: checkpoint-2")]
    assert len(failed_lines) == 1, result.output


def test_relative_folders_work_as_the_docs_write_them(three_checkpoints, tmp_path, monkeypatch):
    """Issue 35: `eval --lq photos/ ...` and `--rank-checkpoints runs/x --lq pairs/lq` with paths relative to the
    working folder (as every docs example writes them) crashed with "is not in the subpath" (a bug)."""
    shutil.copytree(three_checkpoints, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    common = ["--lq", "lq/", "--hr", "hr/", "--device", "cpu", "--tag-cache", "off"]
    one = runner.invoke(app, ["eval", "--model", "tiny", *common, "--save-dir", "out_eval/", "--metrics", "psnr"])
    assert one.exit_code == 0 and "bug in sanasr" not in one.output, one.output
    assert [p.name for p in (tmp_path / "w" / "out_eval").glob("*.png")] == [HQ[1].name]
    ranked = runner.invoke(app, ["eval", "--rank-checkpoints", "run", *common, "--metric", "psnr", "--json", "r.json"])
    assert ranked.exit_code == 0, ranked.output
    ranking = json.loads((tmp_path / "w" / "r.json").read_text())["ranking"]
    assert sorted(r["step"] for r in ranking) == [1, 2, 3] and all(r["error"] is None for r in ranking), ranking
