"""Issue 15, items 7-10 and the model-directory bullets: untrusted files are refused by name, in one line.

Real files made here (a PostScript file, a 32-bit TIFF, GIFs, model directories written by save_model_dir and
then tampered with), the real CLI with the tiny model.
"""

import json

import numpy as np
import pytest
from PIL import Image

from sanasr_cli.data.io import probe_image, read_image
from sanasr_cli.errors import ImageReadError
from sanasr_cli.models.lora import add_lora, lora_config
from sanasr_cli.models.sanasr import save_model_dir
from sanasr_cli.prompts.taggers import FileTagger
from tests.helpers import make_photo_like, one_error_line, run, snapshot
from tests.helpers import save_photo as photo

EPS = "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)


# ---------------------------------------------------------------- 7. an allow-list of formats


def test_a_postscript_file_named_png_is_never_decoded(tmp_path):
    eps = tmp_path / "holiday.png"
    eps.write_text(EPS)  # Pillow's EPS plugin would hand this to Ghostscript
    with pytest.raises(ImageReadError, match="not a recognised image file"):
        probe_image(eps)
    with pytest.raises(ImageReadError, match="not a recognised image file"):
        read_image(eps)


def test_upscale_fails_the_postscript_file_alone(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "holiday.png").write_text(EPS)
    photo(tmp_path / "in" / "cat.png")
    result = run("upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", "tiny")
    assert result.exit_code == 1 and "holiday.png: not a recognised image file" in result.output
    assert (tmp_path / "out" / "cat.png").is_file() and not (tmp_path / "out" / "holiday.png").exists()


# ---------------------------------------------------------------- 8. 32-bit integer TIFF


def test_32_bit_integer_tiff_is_refused_not_wrapped(tmp_path):
    path = tmp_path / "deep.tif"
    Image.fromarray(np.array([[70000, 5], [1, 2]], dtype=np.int32)).save(path)  # 70000 would wrap to 4464
    with pytest.raises(ImageReadError, match="32-bit integer"):
        read_image(path)


# ---------------------------------------------------------------- 9. model directories


@pytest.fixture
def model_dir(tmp_path, tiny_model):
    return save_model_dir(tiny_model, tmp_path / "m")


def _edit(model_dir, **changes):
    path = model_dir / "sanasr.json"
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("where", ["../../x", "/etc", "link"])
def test_model_dir_paths_may_not_lead_outside_it(model_dir, tmp_path, where):
    if where == "link":
        (model_dir / "transformer").rename(tmp_path / "elsewhere")
        (model_dir / "transformer").symlink_to(tmp_path / "elsewhere")
        where = "transformer"
    _edit(model_dir, transformer=where)
    photo(tmp_path / "in" / "cat.png")
    result = run("upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", model_dir)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "sub-folder of the model directory" in line or "leads outside the model directory" in line


def test_a_pickle_only_adapter_is_refused_by_name(tmp_path, fresh_tiny_model):
    add_lora(fresh_tiny_model.transformer, lora_config(rank=2, alpha=2))
    folder = save_model_dir(fresh_tiny_model, tmp_path / "lora", save_transformer=False)
    (folder / "adapter" / "adapter_model.safetensors").unlink()
    (folder / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    photo(tmp_path / "in" / "cat.png")
    for args in (
        ["upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", folder],
        ["merge-lora", folder, "-o", tmp_path / "merged"],
    ):
        result = run(*args)
        assert result.exit_code == 2 and "adapter_model.bin (a pickle file" in one_error_line(result)


def test_tag_sidecars_are_not_followed_through_symlinks(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password123")
    cat = photo(tmp_path / "in" / "cat.png")
    (tmp_path / "in" / "cat.txt").symlink_to(secret)
    assert FileTagger().tags(None, cat) == []
    (tmp_path / "in" / "cat.txt").unlink()
    (tmp_path / "in" / "cat.txt").write_text("tabby, sofa")
    assert FileTagger().tags(None, cat) == ["tabby", " sofa"]


# ---------------------------------------------------------------- 10. GIF, and every file in the report


def test_gifs_are_upscaled_and_every_file_is_in_the_report(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(make_photo_like(8, 8, 1)).convert("P").save(src / "still.gif")
    frames = [Image.fromarray(make_photo_like(8, 8, s)).convert("P") for s in (2, 3, 4)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    (src / "notes.txt").write_text("not an image")
    report = tmp_path / "run.json"
    result = run("upscale", src, "-o", tmp_path / "out", "--model", "tiny", "--report", report)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "still.png").size == (32, 32)
    assert Image.open(tmp_path / "out" / "anim.png").size == (32, 32)
    records = {r["input"].split("/")[-1]: r for r in json.loads(report.read_text())["records"]}
    assert set(records) == {"still.gif", "anim.gif", "notes.txt"}
    assert records["anim.gif"]["status"] == "ok" and "3 frames" in records["anim.gif"]["note"]
    assert records["notes.txt"]["status"] == "ignored" and "not an image" in records["notes.txt"]["note"]


# ---------------------------------------------------------------- bullet 1: bad model descriptions, one line


@pytest.mark.parametrize(
    "tamper",
    [
        "array",
        "version",
        "tau_g",
        "random_seed",
        "transformer_number",
        "tagger",
        "corrupt_safetensors",
        "truncated_safetensors",
        "bad_config",
    ],
)
def test_a_broken_model_dir_is_one_line_exit_2(model_dir, tmp_path, tamper):
    weights = next((model_dir / "transformer").glob("*.safetensors"))
    if tamper == "array":
        (model_dir / "sanasr.json").write_text("[1, 2]")
    elif tamper == "version":
        _edit(model_dir, version="one")
    elif tamper == "tau_g":
        _edit(model_dir, tau_g="high")
    elif tamper == "random_seed":
        _edit(model_dir, random_seed=[1])
    elif tamper == "transformer_number":
        _edit(model_dir, transformer=7)
    elif tamper == "tagger":
        _edit(model_dir, prompt={"tagger": "psychic"})
    elif tamper == "corrupt_safetensors":
        weights.write_bytes(b"\xff" * 64)
    elif tamper == "truncated_safetensors":
        weights.write_bytes(weights.read_bytes()[:200])
    elif tamper == "bad_config":
        (model_dir / "transformer" / "config.json").write_text('{"num_layers": "many"}')
    photo(tmp_path / "in" / "cat.png")
    before = snapshot(tmp_path)
    result = run("upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", model_dir)
    assert result.exit_code == 2, result.output
    assert str(model_dir) in one_error_line(result)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- issue 34, item 9: sizes from the header only

_PROBE_IN_A_FRESH_PROCESS = """
import resource, sys, time
from sanasr_cli.data.io import probe_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
size, fmt, alpha = probe_image(sys.argv[1], max_pixels=2**62)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(size[0], size[1], time.perf_counter() - start, grown)
"""


def test_a_png_bomb_is_measured_from_its_header_without_decoding_a_pixel(tmp_path):
    """A 20000 x 20000 PNG of a few hundred KB with its EXIF after the image data: Pillow's getexif() decoded all
    400 MP to find the orientation (the demo: ~1.5 GB more per request; the CLI: +239 MB for 62 MP). Its size
    (after the orientation, 6: a quarter turn) now comes from the chunk headers, in a fresh process: fast, and
    well under 100 MB."""
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT, png_bomb

    bomb = png_bomb(tmp_path / "bomb.png", 20000, 10000)
    assert bomb.stat().st_size < 2_000_000
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE_IN_A_FRESH_PROCESS, str(bomb)], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    w, h, seconds, grown_mb = proc.stdout.split()
    assert (int(w), int(h)) == (10000, 20000)  # the orientation was read: width and height swapped
    assert float(seconds) < 2 and float(grown_mb) < 100, (seconds, grown_mb)
    with pytest.raises(ImageReadError, match="200 MP exceeds the 64 MP limit"):
        probe_image(bomb)
