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
