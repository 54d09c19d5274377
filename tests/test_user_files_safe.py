"""Issue 15, items 1-6: nothing the user owns is overwritten or deleted, nothing is written outside -o.

Each test builds the hostile layout with real files, runs the real CLI (tiny model), and checks the exit code,
the one-line message, and that every file that was there before has the same bytes afterwards.
"""

import json
import os
import stat

import pytest
from PIL import Image

from sanasr_cli.models.lora import add_lora, lora_config
from sanasr_cli.models.sanasr import save_model_dir
from sanasr_cli.safe_files import LEDGER_FILE, OutputLedger, atomic_write
from tests.helpers import make_photo_like, one_error_line, run, snapshot
from tests.helpers import save_photo as photo

TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)


# ---------------------------------------------------------------- 1. suffix and confinement


def test_suffix_with_path_parts_is_refused_and_nothing_outside_o_changes(tmp_path):
    photo(tmp_path / "in" / "cat.png")
    (tmp_path / "victim.png").write_bytes(b"the user's file")
    before = snapshot(tmp_path)
    result = run("upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", "tiny", "--suffix", "/../../victim")
    assert result.exit_code == 2
    assert "--suffix" in one_error_line(result)
    assert snapshot(tmp_path) == before


def test_output_through_a_symlinked_subfolder_of_o_is_refused(tmp_path):
    photo(tmp_path / "in" / "sub" / "cat.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cat.png").write_bytes(b"not sanasr's")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(elsewhere)
    before = snapshot(tmp_path)
    result = run("upscale", tmp_path / "in", "-o", tmp_path / "out", "-r", "--model", "tiny")
    assert result.exit_code == 2 and "outside the output folder" in one_error_line(result)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- 2. input inside the output


def test_input_folder_inside_the_output_folder_never_loses_an_input(tmp_path):
    nest = tmp_path / "nest"
    photo(nest / "in" / "cat.png", seed=1)
    photo(nest / "in" / "in" / "cat.png", seed=2)  # its output would be nest/in/cat.png: an input
    before = snapshot(tmp_path)
    result = run("upscale", nest / "in", "-o", nest, "-r", "--model", "tiny")
    assert result.exit_code == 2
    assert "would overwrite the input" in one_error_line(result)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- 3. --overwrite deletes only sanasr's own model dirs


@pytest.fixture
def training_run(tmp_path, fresh_tiny_model):
    """runX/ as `train` leaves it: two checkpoints (model directories + train/), a log, tensorboard."""
    run_dir = tmp_path / "runX"
    add_lora(fresh_tiny_model.transformer, lora_config(rank=2, alpha=2))
    for step in (1, 2):
        ckpt = save_model_dir(fresh_tiny_model, run_dir / f"checkpoint-{step}", save_transformer=False)
        (ckpt / "train").mkdir()
        (ckpt / "train" / "state.json").write_text(json.dumps({"step": step}))
    (run_dir / "log.jsonl").write_text('{"step": 1}\n')
    (run_dir / "tensorboard").mkdir()
    (run_dir / "tensorboard" / "events.out").write_bytes(b"\x00events")
    (run_dir / "sanasr.json").write_text("{}")  # even a stray description does not make a run replaceable
    return run_dir


def test_merge_lora_overwrite_never_deletes_the_training_run(training_run, tmp_path):
    before = snapshot(tmp_path)
    result = run("merge-lora", training_run / "checkpoint-2", "-o", training_run, "--overwrite")
    assert result.exit_code == 2 and "never replaced" in one_error_line(result)
    assert snapshot(tmp_path) == before


def test_prune_overwrite_never_deletes_a_folder_holding_other_things(training_run, tmp_path):
    other = tmp_path / "runY"
    other.mkdir()
    (other / "sanasr.json").write_text("{}")
    (other / "notes.txt").write_text("my notes")
    before = snapshot(tmp_path)
    result = run(
        "prune", training_run / "checkpoint-2", "-o", other, "--overwrite", "--budget", "1", "--strategy", "tail"
    )
    assert result.exit_code == 2 and "notes.txt" in one_error_line(result)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_merge_lora_overwrite_refuses_a_file_or_a_link(training_run, tmp_path, kind):
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("a file")
    else:
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "sanasr.json").write_text("{}")
        target.symlink_to(tmp_path / "real")
    before = snapshot(tmp_path)
    result = run("merge-lora", training_run / "checkpoint-2", "-o", target, "--overwrite")
    assert result.exit_code == 2 and "not a folder" in one_error_line(result)
    assert snapshot(tmp_path) == before


def test_merge_lora_overwrite_replaces_its_own_model_dir(training_run, tmp_path):
    out = tmp_path / "merged"
    assert run("merge-lora", training_run / "checkpoint-2", "-o", out).exit_code == 0
    assert run("merge-lora", training_run / "checkpoint-2", "-o", out, "--overwrite").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["sanasr.json", "transformer"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the old one is gone


# ---------------------------------------------------------------- 4. two inputs, one output


def test_two_inputs_with_one_output_name_are_refused_before_any_work(tmp_path):
    photo(tmp_path / "in" / "a.png", seed=1)
    Image.fromarray(make_photo_like(8, 8, 2)).save(tmp_path / "in" / "a.jpg")
    result = run("upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", "tiny")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "a.png" in line and "a.jpg" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.png"))


# ---------------------------------------------------------------- 5. resume replaces only what sanasr wrote


def test_resume_never_replaces_a_file_sanasr_did_not_write(tmp_path):
    t4 = tmp_path / "t4"
    t4.mkdir()
    Image.fromarray(make_photo_like(8, 8, 1)).save(t4 / "photo.jpg")
    photo(t4 / "photo.png", 32, 32, seed=9)  # the user's own photo.png, exactly the output's size
    out = tmp_path / "out"
    photo(tmp_path / "in" / "cat.png")
    photo(out / "cat.png", 5, 7, seed=3)  # unrelated, another size: once redone as a "partial output"
    before = snapshot(tmp_path)
    result = run("upscale", t4 / "photo.jpg", "-o", t4, "--model", "tiny")
    assert result.exit_code == 1 and "photo.png already exists and was not written by sanasr" in result.output
    result = run("upscale", tmp_path / "in", "-o", out, "--model", "tiny")
    assert result.exit_code == 1 and "cat.png already exists and was not written by sanasr" in result.output
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if LEDGER_FILE not in k} == before


def test_a_rerun_skips_its_own_outputs_and_overwrite_replaces_them(tmp_path):
    photo(tmp_path / "in" / "cat.png")
    out = tmp_path / "out"
    assert run("upscale", tmp_path / "in", "-o", out, "--model", "tiny").exit_code == 0
    assert OutputLedger(out).owns(out / "cat.png")
    stamp = (out / "cat.png").stat().st_mtime_ns
    assert run("upscale", tmp_path / "in", "-o", out, "--model", "tiny").exit_code == 0
    assert (out / "cat.png").stat().st_mtime_ns == stamp  # skipped (resume)
    assert run("upscale", tmp_path / "in", "-o", out, "--model", "tiny", "--scale", "2").exit_code == 0
    assert Image.open(out / "cat.png").size == (16, 16)  # its own output, wrong size: redone


def _degrade_inputs(folder):
    for i, name in enumerate(("a", "b", "c")):
        photo(folder / f"{name}.png", 16, 16, seed=i)
    return folder


def test_degrade_never_replaces_a_file_sanasr_did_not_write(tmp_path):
    """The same rule as upscale: OUT/hq/a.png and OUT/lq/b.png are the user's; those inputs fail naming the file,
    c is written, and every file that was there keeps its bytes. A rerun replaces degrade's own outputs (and
    only while they are as it wrote them); --overwrite replaces the user's too."""
    src, out = _degrade_inputs(tmp_path / "in"), tmp_path / "out"
    photo(out / "hq" / "a.png", 16, 16, seed=7)
    photo(out / "lq" / "b.png", 4, 4, seed=8)
    before = snapshot(tmp_path)
    args = ["degrade", src, "-o", out, "--crop", "16"]
    result = run(*args)
    assert result.exit_code == 1, result.output
    failed = {r["input"].split("/")[-1]: r["error"] for r in json.loads((out / "degradation.json").read_text())["files"]
              if r["status"] == "failed"}  # fmt: skip
    assert set(failed) == {"a.png", "b.png"}, failed
    assert str(out / "hq" / "a.png") + " already exists and was not written by sanasr" in failed["a.png"]
    assert str(out / "lq" / "b.png") + " already exists and was not written by sanasr" in failed["b.png"]
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert (out / "hq" / "c.png").is_file() and (out / "lq" / "c.png").is_file()
    assert not (out / "lq" / "a.png").exists()  # a failed before any of its outputs was written

    inode, data = (out / "hq" / "c.png").stat().st_ino, (out / "hq" / "c.png").read_bytes()
    assert run(*args).exit_code == 1  # a rerun replaces degrade's own outputs (same bytes: same seed)
    assert (out / "hq" / "c.png").stat().st_ino != inode and (out / "hq" / "c.png").read_bytes() == data
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before

    assert run(*args, "--overwrite").exit_code == 0
    assert Image.open(out / "lq" / "b.png").size == (4, 4) and (out / "lq" / "b.png").read_bytes() != before[
        "out/lq/b.png"
    ]  # fmt: skip


def test_degrade_refuses_links_out_of_its_folder_and_a_foreign_manifest(tmp_path):
    src, out = _degrade_inputs(tmp_path / "in"), tmp_path / "out"
    (tmp_path / "victim.png").write_bytes(b"the user's file")
    (out / "hq").mkdir(parents=True)
    (out / "hq" / "a.png").symlink_to(tmp_path / "victim.png")
    for extra in ([], ["--overwrite"]):  # a link is not degrade's own file; even --overwrite never leaves OUT
        result = run("degrade", src, "-o", out, "--crop", "16", *extra)
        assert result.exit_code == 1 and "a.png" in result.output
        assert (tmp_path / "victim.png").read_bytes() == b"the user's file"
    (out / "hq" / "a.png").unlink()
    (out / "degradation.json").write_text("my notes")  # refused before any work: exit 2, nothing written
    (out / "hq" / "c.png").unlink()
    before = snapshot(tmp_path)
    result = run("degrade", src, "-o", out, "--crop", "16")
    assert result.exit_code == 2 and "degradation.json already exists" in one_error_line(result)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- 6. links and special files are written through


def test_report_and_json_write_through_symlinks(tmp_path):
    photo(tmp_path / "in" / "cat.png")
    (tmp_path / "real.json").write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "real.json")
    result = run("upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", "tiny", "--report", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and json.loads((tmp_path / "real.json").read_text())["summary"]["ok"] == 1

    hr = tmp_path / "hr"
    photo(hr / "cat.png", 32, 32)
    (tmp_path / "real2.json").write_text("old")
    link2 = tmp_path / "link2.json"
    link2.symlink_to(tmp_path / "real2.json")
    result = run("eval", "--sr", tmp_path / "out", "--hr", hr, "--metrics", "psnr", "--json", link2, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert link2.is_symlink() and "psnr" in json.loads((tmp_path / "real2.json").read_text())["means"]


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_node_is_written_in_place_never_replaced(tmp_path):
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own, in the test folder
    atomic_write(null, b"{}")
    assert stat.S_ISCHR(os.stat(null).st_mode)
    full = tmp_path / "full"
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # /dev/full: every write fails with ENOSPC
    hr = tmp_path / "hr"
    photo(hr / "cat.png")
    result = run("eval", "--sr", hr, "--hr", hr, "--metrics", "psnr", "--json", full, "--device", "cpu")
    assert result.exit_code == 1 and "No space left on device" in one_error_line(result)
    assert stat.S_ISCHR(os.stat(full).st_mode)


# ---------------------------------------------------------------- 7. a file the run reads is never a file it writes
# (issue 34, item 1: `--report img.png` replaced the image with JSON, exit 0)


def test_a_report_path_that_is_an_input_is_refused_before_any_work(tmp_path):
    img = photo(tmp_path / "img.png")
    hr = tmp_path / "hr"
    photo(hr / "a.png", 32, 32)
    (tmp_path / "hard.png").hardlink_to(img)  # another name of the same file
    (tmp_path / "soft.png").symlink_to(img)
    before = snapshot(tmp_path)
    for report in (img, tmp_path / "hard.png", tmp_path / "soft.png"):
        result = run("upscale", img, "-o", tmp_path / "out", "--model", "tiny", "--report", report)
        assert result.exit_code == 2, result.output
        assert "is an input of this run" in one_error_line(result)
    for flag in ("--json", "--csv"):
        result = run("eval", "--sr", hr, "--hr", hr, "--metrics", "psnr", flag, hr / "a.png", "--device", "cpu")
        assert result.exit_code == 2, result.output
        assert "is an input of this run" in one_error_line(result)
    assert snapshot(tmp_path) == before


def test_every_write_is_checked_against_the_runs_inputs_when_it_happens(tmp_path):
    """The check sits in atomic_write itself (every file sanasr writes goes through it): an input noted after
    a report path was checked, or a write no command checked up front, is still refused at the moment of
    writing. Outside a run (the Python API) nothing is recorded."""
    from sanasr_cli.errors import UnsafeOutputError
    from sanasr_cli.safe_files import check_output_file, note_inputs, run_inputs

    img = photo(tmp_path / "img.png")
    data = img.read_bytes()
    with run_inputs():
        check_output_file(img, "--report")  # not yet an input: passes
        note_inputs(img)
        for target in (img, tmp_path / "link.png"):
            if target.name == "link.png":
                target.symlink_to(img)
            with pytest.raises(UnsafeOutputError, match="is an input of this run"):
                atomic_write(target, b"{}")
        with pytest.raises(UnsafeOutputError, match="is an input of this run"):
            check_output_file(img, "--report")
    assert img.read_bytes() == data and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    atomic_write(tmp_path / "new.json", b"{}")  # the run is over: nothing is an input any more
    note_inputs(img)  # outside a run: not recorded
    atomic_write(tmp_path / "copy.png", img.read_bytes())


# ---------------------------------------------------------------- 8. a file that appears during the run
# (issue 34, item 3: the ledger was asked only before the work started)


def test_a_file_made_at_an_output_path_during_the_run_is_never_replaced(tmp_path, tiny_model):
    from sanasr_cli.data.io import list_images
    from sanasr_cli.errors import UnsafeOutputError
    from sanasr_cli.pipeline.upscale import UpscaleOptions, upscale_files

    src, out = tmp_path / "in", tmp_path / "out"
    photo(src / "a.png", seed=1)
    photo(src / "b.png", seed=2)

    def users_file_appears(rec):  # a's result is written: the user now saves a file where b's will go
        if rec.input.endswith("a.png"):
            (out / "b.png").write_bytes(b"the user's, made during the run")

    records = upscale_files(tiny_model, list_images(src), src, out, UpscaleOptions(), on_done=users_file_appears)
    assert [r.status for r in records] == ["ok", "failed"]
    assert "b.png already exists and was not written by sanasr" in records[1].error
    assert (out / "b.png").read_bytes() == b"the user's, made during the run"
    assert sorted(p.name for p in out.iterdir()) == [LEDGER_FILE, "a.png", "b.png"]  # no temp file left

    (out / "b.png").unlink()  # a file that appears after the check, right before the rename: not replaced either

    def appears_now(_):
        (out / "b.png").write_bytes(b"made in the last moment")

    with pytest.raises(UnsafeOutputError, match="already exists and was not written by sanasr"):
        atomic_write(out / "b.png", b"sanasr's", before_replace=appears_now, may_replace=OutputLedger(out).owns)
    assert (out / "b.png").read_bytes() == b"made in the last moment"
    assert sorted(p.name for p in out.iterdir()) == [LEDGER_FILE, "a.png", "b.png"]


def test_a_name_near_the_file_systems_limit_is_upscaled(tmp_path):
    """Issue 34, item 13: a valid 244-character input name failed, because the temp file's name (the output's
    name plus a mark and a random part) passed 255 bytes; the temp name is cut, the output keeps its name."""
    name = "p" * 240 + ".png"
    photo(tmp_path / "in" / name)
    result = run("upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", "tiny")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / name).size == (32, 32)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LEDGER_FILE, name]


def test_degrade_never_replaces_a_manifest_or_pair_made_during_the_run(tmp_path):
    """The same at-write-time check for `degrade`: a file the user saves at an output path (OUT/hq/b.png) or at
    OUT/degradation.json while the run works is left as it is; that input fails, the manifest write is refused."""
    from sanasr_cli.data.degradation import RealESRGANDegrader
    from sanasr_cli.errors import UnsafeOutputError
    from sanasr_cli.pipeline.degrade import degrade_files, write_manifest

    src, out = _degrade_inputs(tmp_path / "in"), tmp_path / "out"

    def users_files_appear(rec):
        if rec.input.endswith("a.png"):
            photo(out / "hq" / "b.png", 16, 16, seed=9)
            (out / "degradation.json").write_text("my notes")

    degrader = RealESRGANDegrader()
    records = degrade_files(sorted(src.iterdir()), out, degrader, crop=16, on_done=users_files_appear)
    assert [r.status for r in records] == ["ok", "failed", "ok"]
    assert "b.png already exists and was not written by sanasr" in records[1].error
    with pytest.raises(UnsafeOutputError, match="degradation.json already exists"):
        write_manifest(out / "degradation.json", degrader, 0, 16, records)
    assert (out / "degradation.json").read_text() == "my notes" and Image.open(out / "hq" / "b.png").size == (16, 16)
