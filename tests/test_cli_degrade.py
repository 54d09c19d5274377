"""`sanasr degrade` via the real CLI: pair sizes, same seed -> same bytes (also in a subprocess), errors."""

import json
import shutil
import subprocess
import sys

from PIL import Image
from typer.testing import CliRunner

from sanasr_cli.cli import app
from tests.helpers import REPO_ROOT, child_env, make_photo_like

runner = CliRunner()


def _folder(tmp_path):
    src = tmp_path / "hq_in"
    src.mkdir()
    for name in ("cat", "coffee"):
        shutil.copy(REPO_ROOT / "examples" / "hq" / f"{name}.png", src / f"{name}.png")
    Image.fromarray(make_photo_like(70, 50, 1)).save(src / "odd.png")  # 50 x 70 (w x h)
    return src


def _bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_pairs_sizes_determinism_and_manifest(tmp_path):
    src = _folder(tmp_path)
    args = ["degrade", str(src), "--crop", "64", "--seed", "3"]
    r1 = runner.invoke(app, [*args, "-o", str(tmp_path / "a")])
    assert r1.exit_code == 1, r1.output  # odd.png is smaller than the crop: named, the others still run
    assert "odd.png" in r1.output and "smaller than the 64px crop" in r1.output and "Traceback" not in r1.output
    a = _bytes(tmp_path / "a")
    assert sorted(a) == ["hq/cat.png", "hq/coffee.png", "lq/cat.png", "lq/coffee.png"]
    assert Image.open(tmp_path / "a" / "hq" / "cat.png").size == (64, 64)
    assert Image.open(tmp_path / "a" / "lq" / "cat.png").size == (16, 16)
    # the HQ is the centre crop of the input
    full = Image.open(src / "cat.png")
    assert Image.open(tmp_path / "a" / "hq" / "cat.png").tobytes() == full.crop((96, 96, 160, 160)).tobytes()
    manifest = json.loads((tmp_path / "a" / "degradation.json").read_text())
    assert manifest["seed"] == 3 and manifest["scale"] == 4 and manifest["crop"] == 64
    assert manifest["config"]["noise_range"] == [1.0, 30.0]
    ok = [f for f in manifest["files"] if f["status"] == "ok"]
    assert len(ok) == 2 and "jpeg1" in ok[0]["plan"] and "kernel" not in ok[0]["plan"]["blur1"]

    r2 = runner.invoke(app, [*args, "-o", str(tmp_path / "b")])
    assert r2.exit_code == 1 and _bytes(tmp_path / "b") == a
    assert (tmp_path / "a" / "degradation.json").read_bytes() == (tmp_path / "b" / "degradation.json").read_bytes()
    r3 = runner.invoke(app, ["degrade", str(src), "--crop", "64", "--seed", "4", "-o", str(tmp_path / "c")])
    c = _bytes(tmp_path / "c")
    assert c["hq/cat.png"] == a["hq/cat.png"] and c["lq/cat.png"] != a["lq/cat.png"]
    assert r3.exit_code == 1


def test_no_crop_scale_2_and_a_broken_file(tmp_path):
    src = _folder(tmp_path)
    (src / "broken.jpg").write_text("not a jpeg")
    out = tmp_path / "o"
    result = runner.invoke(app, ["degrade", str(src), "-o", str(out), "--no-crop", "--scale", "2"])
    assert result.exit_code == 1 and "broken.jpg" in result.output and "Traceback" not in result.output
    assert Image.open(out / "hq" / "odd.png").size == (50, 70) and Image.open(out / "lq" / "odd.png").size == (25, 35)
    assert Image.open(out / "lq" / "cat.png").size == (128, 128)
    assert "3 of 4 pairs written" in result.output


def test_usage_errors_exit_2(tmp_path):
    src = _folder(tmp_path)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"noise_rnage": [1, 2]}')
    # an output whose hq/ folder is the input folder itself would overwrite the inputs
    (tmp_path / "work" / "hq").mkdir(parents=True)
    shutil.copy(src / "cat.png", tmp_path / "work" / "hq" / "cat.png")
    cases = [
        ["degrade", str(tmp_path / "missing"), "-o", str(tmp_path / "o")],
        ["degrade", str(src), "-o", str(tmp_path / "o"), "--crop", "66"],
        ["degrade", str(src), "-o", str(tmp_path / "o"), "--config", str(bad_json)],
        ["degrade", str(src), "-o", str(tmp_path / "o"), "--jpeg", "magic"],
        ["degrade", str(tmp_path / "work" / "hq"), "-o", str(tmp_path / "work")],
        ["degrade", str(src)],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
    assert "noise_rnage" in runner.invoke(app, cases[2]).output
    assert "overwrite the inputs" in runner.invoke(app, cases[4]).output


def test_same_bytes_in_a_separate_process(tmp_path):
    src = tmp_path / "one"
    src.mkdir()
    shutil.copy(REPO_ROOT / "examples" / "hq" / "motorcycle.png", src / "m.png")
    r = runner.invoke(app, ["degrade", str(src), "-o", str(tmp_path / "inproc"), "--crop", "96"])
    assert r.exit_code == 0, r.output
    env = child_env()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sanasr_cli",
            "degrade",
            str(src),
            "-o",
            str(tmp_path / "sub"),
            "--crop",
            "96",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert _bytes(tmp_path / "sub") == _bytes(tmp_path / "inproc")


def test_recursive_takes_sub_folders_and_flags_repeated_stems(tmp_path):
    src = _folder(tmp_path)
    (src / "sub").mkdir()
    shutil.copy(REPO_ROOT / "examples" / "hq" / "coffee.png", src / "sub" / "coffee2.png")
    shutil.copy(REPO_ROOT / "examples" / "hq" / "coffee.png", src / "sub" / "cat.png")  # stem used above
    out = tmp_path / "o"
    flat = runner.invoke(app, ["degrade", str(src), "-o", str(tmp_path / "flat"), "--crop", "48"])
    assert not (tmp_path / "flat" / "hq" / "coffee2.png").exists()  # sub-folders only with -r
    result = runner.invoke(app, ["degrade", str(src), "-o", str(out), "--crop", "48", "-r"])
    assert flat.exit_code == 0 and result.exit_code == 1
    assert Image.open(out / "lq" / "coffee2.png").size == (12, 12)
    assert "stem 'cat' already used" in result.output
    inside = runner.invoke(app, ["degrade", str(src), "-o", str(src / "pairs"), "-r"])
    assert inside.exit_code == 2 and "inside the input folder" in inside.output
