"""The Python API (`SanaSRPipeline`) on the real tiny preset: input kinds, sizes, output types, the same bytes
as the CLI's path, lazy top-level export, and one clear ValueError for each input it cannot take."""

import doctest
import importlib.machinery
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sanasr_cli.data.io import read_image, to_uint8, uint8_to_tensor
from sanasr_cli.pipeline import sana_sr
from sanasr_cli.pipeline.sana_sr import SanaSRPipeline, SanaSRPipelineOutput
from sanasr_cli.pipeline.upscale import UpscaleOptions, upscale_files, upscale_tensor
from sanasr_cli.prompts.taggers import FileTagger
from sanasr_cli.prompts.template import build_prompt
from tests.helpers import REPO_ROOT, make_photo_like

NANO_DESCRIPTION = REPO_ROOT / "sanasr_cli" / "models" / "nano" / "sr" / "sanasr.json"


TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)


@pytest.fixture
def pipe(tiny_model):
    return SanaSRPipeline(tiny_model)


def test_pil_in_pil_out_at_four_times_the_size(pipe):
    out = pipe(Image.fromarray(make_photo_like(12, 10, 1)))
    assert isinstance(out, SanaSRPipelineOutput)
    (img,) = out.images
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (40, 48)
    assert out.prompts == [build_prompt([], pipe.prompt_rule.template)]  # tiny's rule: no tagger
    assert out.tile_plans[0].dit_tile is None  # whole image on CPU


def test_numpy_and_tensor_inputs_give_the_same_result_as_pil(pipe):
    arr = make_photo_like(11, 9, 2)
    chw = uint8_to_tensor(arr)
    ref = pipe(Image.fromarray(arr), output_type="pt").images[0]
    assert ref.shape == (3, 44, 36)
    for x in (arr, arr.astype(np.float64) / 255, chw, chw[None], chw.double()):
        got = pipe(x, output_type="pt").images
        assert len(got) == 1 and torch.equal(got[0], ref), type(x)
    gray = pipe(arr[:, :, 0], output_type="pt").images[0]  # (H, W): replicated to RGB
    assert torch.equal(gray, pipe(np.repeat(arr[:, :, :1], 3, 2), output_type="pt").images[0])


def test_a_list_of_different_sizes_and_a_batch_tensor(pipe):
    a, b, c = make_photo_like(8, 8, 3), make_photo_like(7, 13, 4), make_photo_like(10, 6, 5)
    batch = torch.stack([uint8_to_tensor(make_photo_like(6, 6, s)) for s in (6, 7)])
    out = pipe([Image.fromarray(a), b, uint8_to_tensor(c), batch], prompt="a photo", output_type="pt")
    assert [tuple(t.shape[-2:]) for t in out.images] == [(32, 32), (28, 52), (40, 24), (24, 24), (24, 24)]
    assert len(out.prompts) == len(out.tile_plans) == 5
    assert all(p.startswith("a photo, ") for p in out.prompts)
    # each entry is what that image alone gives: nothing leaks between images of a list
    assert torch.equal(out.images[1], pipe(b, prompt="a photo", output_type="pt").images[0])
    assert torch.equal(out.images[4], pipe(batch[1], prompt="a photo", output_type="pt").images[0])
    # one prompt per image
    per = pipe([a, b], prompt=["one", "two"]).prompts
    assert per[0].startswith("one, ") and per[1].startswith("two, ")


def test_output_types_agree(pipe):
    arr = make_photo_like(9, 7, 6)
    pt = pipe(arr, output_type="pt").images[0]
    npy = pipe(arr, output_type="np").images[0]
    pil = pipe(arr, output_type="pil").images[0]
    assert pt.dtype == torch.float32 and pt.device.type == "cpu" and pt.shape == (3, 36, 28)
    assert isinstance(npy, np.ndarray) and npy.dtype == np.float32 and npy.shape == (36, 28, 3)
    assert 0 <= npy.min() and npy.max() <= 1
    np.testing.assert_array_equal(npy, pt.permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(np.asarray(pil), to_uint8(pt))
    assert pipe(arr, scale=1.5).images[0].size == (round(7 * 1.5), round(9 * 1.5))
    assert pipe(arr, scale=0.5).images[0].size == (4, 4)  # round(3.5), round(4.5): Python rounds half to even


@pytest.mark.parametrize(
    "kw", [{}, {"tile": 32, "color_fix": "adain"}, {"scale": 2.0, "color_fix": "none", "tile": "none"}]
)
def test_output_equals_upscale_tensor_byte_for_byte(pipe, tiny_model, kw):
    arr = make_photo_like(16, 12, 7)
    out = pipe(Image.fromarray(arr), prompt="a red cat", output_type="pt", **kw)
    prompt = build_prompt([], pipe.prompt_rule.template, "a red cat")
    assert out.prompts == [prompt]
    ref, plan = upscale_tensor(tiny_model, uint8_to_tensor(arr), prompt, return_plan=True, **kw)
    assert torch.equal(out.images[0], ref)
    assert out.tile_plans == [plan]
    if kw.get("tile") == 32:
        assert plan.dit_tile is not None  # the tiled path really ran


def test_output_equals_the_cli_file_path(pipe, tiny_model, tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(make_photo_like(10, 14, 8)).save(src / "p.png")
    options = UpscaleOptions(prompt_rule=pipe.prompt_rule, user_prompt="a dog")
    (rec,) = upscale_files(tiny_model, [src / "p.png"], src, dst, options)
    assert rec.status == "ok"
    out = pipe(Image.open(src / "p.png"), prompt="a dog")
    assert out.prompts == [rec.prompt]
    np.testing.assert_array_equal(np.asarray(out.images[0]), np.asarray(Image.open(rec.output)))


def test_pil_from_a_file_is_tagged_by_its_path(tiny_model, tmp_path):
    Image.fromarray(make_photo_like(6, 6, 9)).save(tmp_path / "cat.png")
    (tmp_path / "cat.txt").write_text("Cat, blurry, sofa\n")
    pipe = SanaSRPipeline(tiny_model, tagger=FileTagger())
    template = pipe.prompt_rule.template
    assert pipe(Image.open(tmp_path / "cat.png")).prompts == [f"cat, sofa, {template}"]  # degradation word dropped
    assert pipe(read_image(tmp_path / "cat.png")[0]).prompts == [template]  # a tensor has no file


def test_top_level_export_is_lazy():
    code = (
        "import sys, sanasr_cli\n"
        "assert 'torch' not in sys.modules, 'import sanasr_cli imported torch'\n"
        "from sanasr_cli import SanaSRPipeline, SanaSRPipelineOutput\n"
        "from sanasr_cli.pipeline.sana_sr import SanaSRPipeline as P\n"
        "assert SanaSRPipeline is P and 'SanaSRPipeline' in dir(sanasr_cli)\n"
        "try:\n    sanasr_cli.NoSuchThing\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_sanasr_imported_after_diffusers_still_loads_the_model():
    """With bitsandbytes installed (pyiqa brings it), a program that imports diffusers before sanasr_cli: diffusers
    recorded bitsandbytes as installed, so sanasr_cli must not hide it (the Sana transformer's import failed:
    "import of bitsandbytes halted")."""
    if importlib.machinery.PathFinder.find_spec("bitsandbytes") is None:  # installed? (sys.modules says None here)
        pytest.skip("bitsandbytes is not installed: nothing to hide")
    code = (
        "import diffusers\n"
        "import sanasr_cli\n"
        "from diffusers import SanaTransformer2DModel\n"
        "from sanasr_cli.models.sanasr import load_model\n"
        "load_model('tiny', random_weights=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # and no warning from diffusers' `to` (it warns of fp32 modules, even of none, whenever a dtype is passed)
    assert "kept in float32" not in done.stderr, done.stderr[-2000:]


def test_docstring_example_runs():
    result = doctest.testmod(sana_sr, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0


@pytest.mark.parametrize(
    "image, kw, match",
    [
        (np.zeros((4, 4, 3), np.uint16), {}, "uint8, or float"),
        (np.zeros((4, 4, 4), np.uint8), {}, r"\(H, W, 3\)"),
        (np.zeros((3, 4, 4), np.uint8), {}, r"\(H, W, 3\)"),
        (np.full((4, 4, 3), 255.0), {}, r"in \[0, 1\]"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), {}, "float"),
        (torch.zeros(4, 4, 3), {}, r"\(3, H, W\)"),
        (torch.full((3, 4, 4), -0.5), {}, r"in \[0, 1\]"),
        (torch.full((3, 4, 4), float("nan")), {}, r"in \[0, 1\]"),
        (torch.zeros(3, 0, 4), {}, "empty image"),
        (Image.new("I;16", (4, 4)), {}, "not 8-bit"),
        ([], {}, "no images"),
        ("cat.png", {}, "PIL image, numpy array or torch tensor"),
        (np.zeros((4, 4, 3), np.uint8), {"scale": 0}, "scale"),
        (np.zeros((4, 4, 3), np.uint8), {"scale": -2.0}, "scale"),
        (np.zeros((4, 4, 3), np.uint8), {"scale": float("inf")}, "scale"),
        (np.zeros((4, 4, 3), np.uint8), {"color_fix": "hist"}, "color_fix"),
        (np.zeros((4, 4, 3), np.uint8), {"output_type": "jpg"}, "output_type"),
        (np.zeros((4, 4, 3), np.uint8), {"tile": "big"}, "tile"),
        (np.zeros((4, 4, 3), np.uint8), {"prompt": ["a", "b"]}, "one per image"),
        (np.zeros((4, 4, 3), np.uint8), {"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_input_is_a_clear_value_error(pipe, image, kw, match):
    with pytest.raises(ValueError, match=match):
        pipe(image, **kw)


@pytest.mark.skipif(not NANO_DESCRIPTION.is_file(), reason="nano is not shipped in this checkout yet")
def test_nano_upscales_the_example_photo_as_the_cli_does(tmp_path):
    pipe = SanaSRPipeline.from_pretrained("nano")
    lq_path = REPO_ROOT / "examples" / "lq" / "cat.png"
    out = pipe(Image.open(lq_path))
    assert out.images[0].size == (256, 256)
    options = UpscaleOptions(prompt_rule=pipe.prompt_rule, tagger=pipe.tagger)
    (rec,) = upscale_files(pipe.model, [lq_path], lq_path.parent, tmp_path, options)
    assert out.prompts == [rec.prompt]
    np.testing.assert_array_equal(np.asarray(out.images[0]), np.asarray(Image.open(rec.output)))
    # different sizes in one list on the trained model too
    small = pipe([Image.open(lq_path), make_photo_like(24, 40, 1)], output_type="pt").images
    assert [tuple(t.shape[-2:]) for t in small] == [(256, 256), (96, 160)]
    assert Path(rec.output).is_file()
