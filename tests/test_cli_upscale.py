"""`sanasr upscale` through the real CLI (Typer's runner in-process, and once as a subprocess)."""

import os
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from sanasr_cli.cli import app
from tests.helpers import child_env

runner = CliRunner()


TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)


def test_upscale_folder_sizes_and_exit_code(image_folder, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["upscale", str(image_folder), "-o", str(out), "--model", "tiny"])
    assert result.exit_code == 0, result.output
    sizes = {p.name: Image.open(p).size for p in out.glob("*.png")}
    assert sizes == {"a.png": (64, 64), "b.png": (84, 52), "c.png": (48, 80)}
    assert all(Image.open(p).mode == "RGB" for p in out.glob("*.png"))


def test_a_bad_file_fails_alone_with_exit_1(image_folder, tmp_path):
    (image_folder / "broken.png").write_text("this is not a png")
    (image_folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = runner.invoke(app, ["upscale", str(image_folder), "-o", str(out), "--model", "tiny"])
    assert result.exit_code == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.png", "b.png", "c.png"]
    assert "broken.png" in result.output and "empty.jpg" in result.output
    assert "Traceback" not in result.output


def test_single_file_and_scale(image_folder, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["upscale", str(image_folder / "b.png"), "-o", str(out), "--model", "tiny", "--scale", "2"]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out / "b.png").size == (42, 26)


def test_usage_errors_exit_2(image_folder, tmp_path):
    cases = [
        ["upscale", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), "--model", "tiny"],
        ["upscale", str(image_folder), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "no_model")],
        ["upscale", str(image_folder), "-o", str(tmp_path / "o"), "--model", "tiny", "--tagger", "psychic"],
        ["upscale", str(image_folder), "-o", str(tmp_path / "o"), "--model", "tiny", "--scale", "0.5"],
        ["upscale", str(image_folder)],  # no -o
    ]
    (tmp_path / "emptydir").mkdir()
    cases.append(["upscale", str(tmp_path / "emptydir"), "-o", str(tmp_path / "o"), "--model", "tiny"])
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output


def test_missing_weights_is_one_clear_line(image_folder, tmp_path):
    """A --base folder without the weights: one line naming the component (exit 1); a --base folder that is not
    there at all: "not found", a usage error (exit 2), never looked up on the hub (issue 35)."""
    (tmp_path / "empty").mkdir()
    args = ["upscale", str(image_folder), "-o", str(tmp_path / "o"), "--model", "sana-600m-512", "--base"]
    result = runner.invoke(app, [*args, str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "missing weights for 'transformer'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, [*args, str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and f"base folder {tmp_path / 'nowhere'} not found" in " ".join(result.output.split())


def test_help_lists_only_working_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "upscale" in result.output


def test_console_script_entry_point_runs(image_folder, tmp_path):
    """`python -m sanasr_cli` as a user would run it (a real process, real files)."""
    env = child_env(OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sanasr_cli",
            "upscale",
            str(image_folder / "a.png"),
            "-o",
            str(out),
            "--model",
            "tiny",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out / "a.png").size == (64, 64)


def test_usage_errors_for_new_flags_and_folders(image_folder, tmp_path):
    (tmp_path / "a_file").write_text("x")
    cases = {
        "inside the input folder": ["-o", str(image_folder / "results")],
        "is not writable": ["-o", str(tmp_path / "a_file" / "sub")],
        "--tile takes": ["-o", str(tmp_path / "o"), "--tile", "huge"],
        "--color-fix takes": ["-o", str(tmp_path / "o"), "--color-fix", "sepia"],
        "--ext takes": ["-o", str(tmp_path / "o"), "--ext", "gif"],
        "--shard takes": ["-o", str(tmp_path / "o"), "--shard", "2/2"],
    }
    for message, args in cases.items():
        result = runner.invoke(app, ["upscale", str(image_folder), *args, "--model", "tiny"])
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    same = runner.invoke(app, ["upscale", str(image_folder), "-o", str(image_folder), "--model", "tiny"])
    assert same.exit_code == 2


def test_report_summary_shard_and_pixel_limit(image_folder, tmp_path):
    import json

    out, report = tmp_path / "out", tmp_path / "run.json"
    args = [
        "upscale",
        str(image_folder),
        "-o",
        str(out),
        "--model",
        "tiny",
        "--report",
        str(report),
        "--max-pixels",
        "0.00025",
        "--shard",
        "0/2",
        "--suffix",
        "_x4",
        "--color-fix",
        "adain",
        "--tile",
        "32",
    ]
    result = runner.invoke(app, args)
    # shard 0/2 of [a.png, b.png, c.jpg] = a.png, c.jpg; c.jpg (20x12 = 240 px) passes, a.png (256) does not
    assert result.exit_code == 1, result.output
    doc = json.loads(report.read_text())
    by = {r["input"].split("/")[-1]: r for r in doc["records"]}
    assert set(by) == {"a.png", "c.jpg"} and by["a.png"]["status"] == "failed" and "MP limit" in by["a.png"]["error"]
    assert by["c.jpg"]["status"] == "ok" and by["c.jpg"]["tile_plan"]["dit_tiles"] > 1
    assert doc["meta"]["shard"] == "0/2" and doc["meta"]["color_fix"] == "adain"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["c_x4.png"]
    assert "upscale summary" in result.output and "Traceback" not in result.output
    # rerun without the limit: the finished file is skipped, the refused one now done
    result = runner.invoke(app, args[:8] + args[10:])
    assert result.exit_code == 0, result.output
    statuses = {r["input"].split("/")[-1]: r["status"] for r in json.loads(report.read_text())["records"]}
    assert statuses == {"a.png": "ok", "c.jpg": "skipped"}


def test_nano_with_hf_hub_offline_unset_touches_no_network(image_folder, tmp_path, network_attempts):
    """Issue 34, item 5: in a normal user's shell (HF_HUB_OFFLINE unset, an empty Hugging Face cache) `sanasr
    upscale --model nano` reaches nothing beyond this machine: the test suite's network guard refuses and records
    any lookup or connection in the process (tests/netguard), and none is recorded."""
    env = child_env(OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf_home"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "sanasr_cli", "upscale", str(image_folder / "a.png"), "-o", str(tmp_path / "out"),
           "--model", "nano"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert network_attempts.read() == [], proc.stderr


def test_a_model_that_needs_a_download_says_so_in_one_line_first(monkeypatch, tmp_path, caplog):
    """Weights not on this machine are announced (one `warning:` line in the CLI, a DownloadNotice from the
    library) before anything is fetched, naming what runs offline; local or cached weights, or downloads turned off
    (HF_HUB_OFFLINE, the demo), are never announced nor looked up. Issue 35: where the hub does not answer (one TCP
    probe, here a hub on this machine that answers, then one that does not), the same line, then local only at once
    (huggingface_hub's offline mode for the process: no minute of retries), said in one line."""
    import socket
    import warnings

    from huggingface_hub import constants

    from sanasr_cli import hub
    from sanasr_cli.hub import DownloadNotice, downloads_forbidden, hub_load_mode

    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    server = socket.create_server(("127.0.0.1", 0))  # a hub that accepts connections (loopback: the guard allows it)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    hub.hub_reachable.cache_clear()
    try:
        notice = "the weights of 'x': downloading 'org/not-here' from the Hugging Face hub.*--model nano, nano-fast"
        with pytest.warns(DownloadNotice, match=notice):
            assert hub_load_mode("the weights of 'x'", "org/not-here") is False  # a download follows
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert hub_load_mode("local", str(tmp_path)) is True  # a folder: read from the disk
            assert hub_load_mode("a path", str(tmp_path / "no" / "such")) is True  # written as a path: not a hub id
            with downloads_forbidden():
                assert hub_load_mode("the demo", "org/not-here") is True  # local only: fails with its one line
            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
            assert hub_load_mode("offline", "org/not-here") is True
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        server.close()  # the hub no longer answers
        hub.hub_reachable.cache_clear()
        with pytest.warns(DownloadNotice, match="the weights of 'y': downloading 'org/not-here'"):
            assert hub_load_mode("the weights of 'y'", "org/not-here") is True  # local only: fails at once
        assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"  # the rest of the process too
        assert "the Hugging Face hub cannot be reached: only files already in its cache" in caplog.text
    finally:
        server.close()
        hub.hub_reachable.cache_clear()


def test_the_first_suggestion_of_help_runs_as_written(tmp_path, monkeypatch):
    """Issue 35: `sanasr --help` began with `sanasr upscale examples -o outputs --model tiny`, which fails ("no
    images found in examples") and shows an untrained model. Its suggestion now runs, from a clone's root."""
    import re
    import shlex

    from tests.helpers import REPO_ROOT, run

    text = " ".join(run("--help").output.replace("│", " ").split())
    suggestion = re.search(r"Start with `sanasr ([^`]+)`", text).group(1)
    assert "--model nano" in suggestion
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    result = run(*shlex.split(suggestion))
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "outputs").glob("*.png"))) == len(list((REPO_ROOT / "examples" / "lq").glob("*.png")))


def test_an_output_named_like_an_image_is_refused_and_ignored_files_are_named(tmp_path):
    """Issue 35: `-o cat_big.png` quietly made a folder of that name; "(each listed in the report with why)" was
    printed when no --report was asked."""
    from tests.helpers import REPO_ROOT, one_error_line, run, snapshot

    cat = REPO_ROOT / "examples" / "lq" / "cat.png"
    before = snapshot(tmp_path)
    result = run("upscale", cat, "-o", tmp_path / "cat_big.png", "--model", "tiny")
    assert result.exit_code == 2 and "names an image file" in one_error_line(result), result.output
    assert "out/cat.png" in result.output and snapshot(tmp_path) == before  # nothing made
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(cat).save(folder / "cat.png")
    (folder / "cat.txt").write_text("cat")
    (folder / "notes.md").write_text("mine")
    result = run("upscale", folder, "-o", tmp_path / "out", "--model", "tiny")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "ignored 2 file(s) that are not images: cat.txt, notes.md (--report lists each with why)" in text
