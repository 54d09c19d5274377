"""Folders through the library (tiny model, real files): modes end to end, scales, resume, report fields,
save-prompts, batching, and every bad input failing alone."""

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from sanasr_cli.data.io import TEMP_MARK, read_image
from sanasr_cli.pipeline.upscale import (
    UpscaleOptions,
    output_path_for,
    parse_shard,
    split_work,
    upscale_files,
    upscale_tensor,
    write_report,
)
from sanasr_cli.prompts.rule import PromptRule
from tests.helpers import make_photo_like

TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)


def _opts(**kw):
    return UpscaleOptions(**kw)


def test_every_mode_round_trips_with_size_mode_and_depth(tiny_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(make_photo_like(6, 5, 1)).save(src / "rgb.png", icc_profile=icc)
    Image.fromarray(make_photo_like(6, 5, 2)[:, :, 0], "L").save(src / "gray.png")
    cv2.imwrite(str(src / "deep.png"), (np.random.default_rng(0).random((5, 7, 3)) * 65535).astype(np.uint16))
    cv2.imwrite(str(src / "deepgray.tif"), (np.random.default_rng(1).random((5, 7)) * 65535).astype(np.uint16))
    rgba = np.dstack([make_photo_like(7, 6, 3), np.full((7, 6), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(src / "alpha.png")
    p = Image.new("P", (5, 5))
    p.putpalette([10, 200, 30] * 256)
    p.save(src / "pal.png", transparency=0)
    Image.new("CMYK", (5, 6), (0, 200, 200, 0)).save(src / "cmyk.jpg")
    Image.fromarray(np.dstack([make_photo_like(6, 6, 4), np.full((6, 6), 90, np.uint8)]), "RGBA").save(
        src / "webalpha.webp", lossless=True
    )
    out = tmp_path / "out"
    recs = {r.input.split("/")[-1]: r for r in upscale_files(tiny_model, sorted(src.iterdir()), src, out, _opts())}
    assert all(r.status == "ok" for r in recs.values()), [r.error for r in recs.values()]

    def opened(name):
        return Image.open(out / name)

    assert opened("rgb.png").mode == "RGB" and opened("rgb.png").size == (20, 24)
    assert opened("rgb.png").info.get("icc_profile") == icc
    assert opened("gray.png").mode == "L"
    deep = cv2.imread(str(out / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (20, 28, 3)
    deepgray = cv2.imread(str(out / "deepgray.png"), cv2.IMREAD_UNCHANGED)
    assert deepgray.dtype == np.uint16 and deepgray.shape == (20, 28)
    a = opened("alpha.png")
    assert a.mode == "RGBA" and a.size == (24, 28) and abs(np.asarray(a)[:, :, 3].astype(int) - 128).max() <= 1
    assert opened("pal.png").mode == "RGBA" and np.asarray(opened("pal.png"))[:, :, 3].max() == 0
    assert opened("cmyk.png").mode == "RGB" and opened("cmyk.png").size == (20, 24)
    assert opened("webalpha.png").mode == "RGBA"
    assert recs["deep.png"].mode == "RGB 16-bit" and recs["cmyk.jpg"].mode == "CMYK"


def test_scales_keep_exact_sizes_and_strips_and_1x1_work(tiny_model, tmp_path):
    for h, w, scale in [
        (13, 21, 2.0),
        (13, 21, 1.0),
        (13, 21, 2.5),
        (13, 21, 6.0),
        (1, 1, 4.0),
        (3, 200, 4.0),
    ]:
        lq = torch.rand(3, h, w)
        sr = upscale_tensor(tiny_model, lq, "a photo", scale=scale)
        assert sr.shape == (3, max(1, round(h * scale)), max(1, round(w * scale))), (h, w, scale)
        assert 0 <= sr.min() and sr.max() <= 1


def test_a_3x2000_strip_and_a_1x1_image_through_files(tiny_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(make_photo_like(3, 2000, 1)).save(src / "strip.png")
    Image.fromarray(make_photo_like(1, 1, 2)).save(src / "dot.png")
    recs = upscale_files(tiny_model, sorted(src.iterdir()), src, tmp_path / "out", _opts(tile=512))
    assert [r.status for r in recs] == ["ok", "ok"], [r.error for r in recs]
    assert Image.open(tmp_path / "out" / "strip.png").size == (8000, 12)
    assert Image.open(tmp_path / "out" / "dot.png").size == (4, 4)
    assert recs[1].tile_plan["dit_tiles"] > 1  # the strip was tiled along its length


def test_resume_skips_finished_and_never_replaces_a_file_it_did_not_write(tiny_model, image_folder, tmp_path):
    out = tmp_path / "out"
    first = upscale_files(tiny_model, sorted(image_folder.iterdir()), image_folder, out, _opts())
    assert [r.status for r in first] == ["ok"] * 3
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    data = (out / "b.png").read_bytes()
    (out / "b.png").write_bytes(data[: len(data) // 2])  # changed by hand since sanasr wrote it: the user's now
    (out / f".c.png{TEMP_MARK}.x1y2").write_bytes(b"left by a killed run")
    second = upscale_files(tiny_model, sorted(image_folder.iterdir()), image_folder, out, _opts())
    assert [r.status for r in second] == ["skipped", "failed", "skipped"]
    assert "not written by sanasr" in second[1].error and str(out / "b.png") in second[1].error
    assert (out / "b.png").read_bytes() == data[: len(data) // 2]  # left as it is
    assert (out / "a.png").stat().st_mtime_ns == stamps["a.png"]
    assert not list(out.glob(f".*{TEMP_MARK}*"))
    # a different scale makes sanasr's own old output unfinished (wrong size): redone
    third = upscale_files(tiny_model, [image_folder / "a.png"], image_folder, out, _opts(scale=2))
    assert third[0].status == "ok" and Image.open(out / "a.png").size == (32, 32)
    forced = upscale_files(tiny_model, [image_folder / "b.png"], image_folder, out, _opts(overwrite=True))
    assert forced[0].status == "ok" and Image.open(out / "b.png").size == (84, 52)


def test_interrupt_leaves_only_complete_files_and_rerun_resumes(tiny_model, image_folder, tmp_path):
    out = tmp_path / "out"

    def stop_after_first(rec):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upscale_files(tiny_model, sorted(image_folder.iterdir()), image_folder, out, _opts(), on_done=stop_after_first)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.png"]
    again = upscale_files(tiny_model, sorted(image_folder.iterdir()), image_folder, out, _opts())
    assert [r.status for r in again] == ["skipped", "ok", "ok"]


def test_ext_suffix_recursive_layout_and_save_prompts(tiny_model, tmp_path):
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(make_photo_like(8, 8, 1)).save(src / "top.jpg")
    Image.fromarray(make_photo_like(8, 8, 2)).save(src / "sub" / "deeper" / "low.png")
    (src / "top.txt").write_text("tree, sky, blurry")
    from sanasr_cli.data.io import list_images

    files = list_images(src, recursive=True)
    out = tmp_path / "out"
    rule = PromptRule(tagger="file")
    recs = upscale_files(
        tiny_model,
        files,
        src,
        out,
        _opts(ext="auto", suffix="_x4", save_prompts=True, prompt_rule=rule, user_prompt="park"),
    )
    assert all(r.status == "ok" for r in recs)
    assert (out / "top_x4.jpg").is_file() and (out / "sub" / "deeper" / "low_x4.png").is_file()
    assert Image.open(out / "top_x4.jpg").format == "JPEG"
    assert (out / "top_x4.txt").read_text().strip() == "tree, sky"  # tags only; 'blurry' is a degradation word
    assert recs[1].prompt.startswith("park, tree, sky, clean")
    # read back with --tagger file: the same prompt
    from sanasr_cli.prompts.taggers import FileTagger
    from sanasr_cli.prompts.template import build_prompt, clean_tags

    tags = clean_tags(FileTagger().tags(None, out / "top_x4.jpg"))
    assert build_prompt(tags, rule.template, "park") == recs[1].prompt
    assert output_path_for(src / "a.jpg", src, out, ext="jpg", has_alpha=True).suffix == ".png"
    assert output_path_for(src / "a.png", src, out, ext="webp", has_alpha=True).suffix == ".webp"


def test_batch_size_gives_the_same_images(tiny_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(make_photo_like(8, 10, i)).save(src / f"s{i}.png")
    Image.fromarray(make_photo_like(9, 9, 5)).save(src / "z.png")
    one = upscale_files(tiny_model, sorted(src.iterdir()), src, tmp_path / "one", _opts(batch_size=1))
    many = upscale_files(tiny_model, sorted(src.iterdir()), src, tmp_path / "many", _opts(batch_size=3))
    assert [r.status for r in one] == [r.status for r in many] == ["ok"] * 4
    for name in ("s0.png", "s1.png", "s2.png", "z.png"):
        a = np.asarray(Image.open(tmp_path / "one" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "many" / name)).astype(int)
        assert np.abs(a - b).max() <= 1, name


def test_bad_inputs_fail_alone_with_one_line(tiny_model, image_folder, tmp_path):
    from tests.test_io_formats import _png_header_only

    good = (image_folder / "a.png").read_bytes()
    (image_folder / "empty.png").write_bytes(b"")
    (image_folder / "trunc.png").write_bytes(good[: len(good) // 2])
    (image_folder / "trunc2.jpg").write_bytes((image_folder / "c.jpg").read_bytes()[:200])
    (image_folder / "text.png").write_text("not a png at all")
    (image_folder / "bomb.png").write_bytes(_png_header_only(90_000, 90_000))
    Image.new("F", (4, 4)).save(image_folder / "float.tif")
    out = tmp_path / "out"
    recs = upscale_files(tiny_model, sorted(image_folder.iterdir()), image_folder, out, _opts())
    by = {r.input.split("/")[-1]: r for r in recs}
    assert {n for n, r in by.items() if r.status == "ok"} == {"a.png", "b.png", "c.jpg"}
    expect = {
        "empty.png": "empty file",
        "trunc.png": "unreadable",
        "trunc2.jpg": "unreadable",
        "text.png": "not a recognised image",
        "bomb.png": "MP limit",
        "float.tif": "unsupported image mode",
    }
    for name, words in expect.items():
        assert by[name].status == "failed" and words in by[name].error and name in by[name].error, by[name]
        assert "\n" not in by[name].error
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]
    # an output that would overwrite its input fails that file only
    same = upscale_files(tiny_model, [image_folder / "a.png"], image_folder, image_folder, _opts())
    assert same[0].status == "failed" and "overwrite its own input" in same[0].error


def test_shards_and_processes_split_without_overlap():
    files = [f"f{i}" for i in range(11)]
    parts = [split_work(files, parse_shard(f"{s}/3"), (p, 2)) for s in range(3) for p in range(2)]
    flat = [f for part in parts for f in part]
    assert sorted(flat) == sorted(files) and len(flat) == len(set(flat))
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_report_has_one_record_per_input_with_plan_seconds_memory(tiny_model, image_folder, tmp_path):
    (image_folder / "bad.png").write_text("nope")
    recs = upscale_files(tiny_model, sorted(image_folder.iterdir()), image_folder, tmp_path / "o", _opts())
    write_report(tmp_path / "run.json", [r.to_dict() for r in recs], {"model": "tiny"})
    doc = json.loads((tmp_path / "run.json").read_text())
    assert doc["summary"] == {"inputs": 4, "ok": 3, "failed": 1}
    ok = [r for r in doc["records"] if r["status"] == "ok"]
    for r in ok:
        assert r["tile_plan"]["factor"] == 8 and r["seconds"] > 0 and r["peak_memory_mb"] > 0
        assert r["output"] and r["output_size"] and r["input_size"] and r["prompt"]
    assert [r["error"] for r in doc["records"] if r["status"] == "failed"][0].startswith(str(image_folder / "bad.png"))
    img, _ = read_image(ok[0]["output"])
    assert list(img.shape[1:][::-1]) == ok[0]["output_size"]


def test_half_precision_model_gives_float32_images_of_the_right_size():
    """--precision bf16 (the CUDA default) through the same path, here on CPU with the tiny preset."""
    from sanasr_cli.models.sanasr import load_model

    model = load_model("tiny", device="cpu", dtype=torch.bfloat16, seed=0)
    assert model.dtype == torch.bfloat16 and model.codec.vae.dtype == torch.bfloat16
    sr, plan = upscale_tensor(model, torch.rand(3, 10, 12), "a photo", scale=2, tile=32, return_plan=True)
    assert sr.dtype == torch.float32 and sr.shape == (3, 20, 24) and torch.isfinite(sr).all()
    assert plan.dit_tile == 4  # 40x48 at x4 = 5x6 latents, 32 px = 4-latent tiles


def test_a_tiled_image_reports_each_tile(tiny_model, tmp_path):
    """Issue 35: one large image showed a bar stuck at 0/1 until it was done. upscale_files reports each LinearDiT
    tile (on_tile(input, done, total)); the CLI moves its bar with it. An untiled image reports nothing."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(make_photo_like(32, 40, 0)).save(folder / "big.png")
    Image.fromarray(make_photo_like(8, 8, 1)).save(folder / "small.png")
    seen = []
    options = UpscaleOptions(tile=64, prompt_rule=PromptRule(tagger="none"))
    records = upscale_files(
        tiny_model, sorted(folder.iterdir()), folder, tmp_path / "out", options, on_tile=lambda *a: seen.append(a)
    )
    assert [r.status for r in records] == ["ok", "ok"]
    total = records[0].tile_plan["dit_tiles"]
    assert total > 1 and seen == [(folder / "big.png", k, total) for k in range(1, total + 1)]
