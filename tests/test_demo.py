"""`sanasr demo` without a browser: what the page does with a photo (sanasr_cli/demo/session.py) is the Python
API's result, models are loaded once, tiles report progress, bad photos and settings are one line naming the
file, and the command's own errors (Gradio missing, a port in use, --host warning) are one line and an exit code.
The page in a real browser: tests/test_demo_browser.py."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO_ROOT, make_photo_like, one_error_line, run

TORCH_THREADS = 1
CAT = REPO_ROOT / "examples" / "lq" / "cat.png"
LIMIT = 1_000_000


@pytest.fixture(scope="module")
def cache():
    from sanasr_cli.demo.session import PipelineCache

    return PipelineCache(device="cpu", seed=0)


def _close(a, b) -> None:
    diff = np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))
    assert diff.max() <= 1, diff.max()


def test_a_photo_gives_the_python_apis_result(cache, tmp_path):
    from sanasr_cli import SanaSRPipeline
    from sanasr_cli.demo.session import DemoRequest, upscale_photo

    request = DemoRequest(model="tiny", scale=2.0, color_fix="adain", prompt="autumn park")
    result = upscale_photo(cache, CAT, request, tmp_path / "out", LIMIT)
    expected = SanaSRPipeline.from_pretrained("tiny", seed=0)(
        Image.open(CAT), prompt="autumn park", scale=2.0, color_fix="adain"
    )
    _close(result.sr, expected.images[0])
    _close(Image.open(result.png), expected.images[0])  # the download is the same image, full resolution
    assert result.png.parent.parent == tmp_path / "out" and result.png.name == "cat_x2.png"
    assert result.prompt == expected.prompts[0] and result.prompt.startswith("autumn park, ")
    assert result.sr.size == result.bicubic.size == (128, 128) and result.input_size == (64, 64)
    assert np.abs(np.asarray(result.bicubic, float) - np.asarray(result.sr, float)).mean() > 5  # not the SR


def test_each_model_loads_once_and_the_least_recent_is_dropped(tmp_path):
    from sanasr_cli.demo.session import PipelineCache

    cache = PipelineCache(device="cpu", size=1)
    first, seconds = cache.get("tiny")
    again, seconds_again = cache.get("tiny")
    assert again is first and seconds > 0 and seconds_again == 0 and cache.loads == 1
    cache.get("nano")
    assert cache.get("tiny")[0] is not first and cache.loads == 3  # size 1: nano pushed tiny out


def test_tiles_report_progress_and_give_the_apis_tiled_result(cache, tmp_path):
    from sanasr_cli import SanaSRPipeline
    from sanasr_cli.demo.session import DemoRequest, upscale_photo

    calls = []
    result = upscale_photo(
        cache, CAT, DemoRequest(model="tiny", tile="128"), tmp_path, LIMIT, on_tile=lambda *c: calls.append(c)
    )
    n = result.plan.dit_tiles
    assert n > 1 and calls == [(i, n) for i in range(1, n + 1)]
    expected = SanaSRPipeline.from_pretrained("tiny", seed=0)(Image.open(CAT), tile=128)
    _close(result.sr, expected.images[0])


def test_bad_photos_and_settings_are_one_line_naming_the_file(cache, tmp_path):
    from sanasr_cli.demo.session import DemoInputError, DemoRequest, check_photo, upscale_photo

    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    with pytest.raises(DemoInputError, match=r"^notes.txt: not a recognised image file") as e:
        check_photo(notes, LIMIT)
    assert str(tmp_path) not in str(e.value)  # the server's copy of the upload is not the user's business
    big = tmp_path / "big.png"
    Image.fromarray(make_photo_like(40, 50)).save(big)
    with pytest.raises(DemoInputError, match=r"big.png is 50 x 40 = 0.002 MP, above this demo's limit of 0.001 MP"):
        check_photo(big, 1000)
    assert check_photo(big, 2000) == (50, 40)
    with pytest.raises(DemoInputError, match="tile takes auto, none or a tile size"):
        upscale_photo(cache, CAT, DemoRequest(model="tiny", tile="big"), tmp_path, LIMIT)
    with pytest.raises(DemoInputError, match="scale must be a number >= 1"):
        upscale_photo(cache, CAT, DemoRequest(model="tiny", scale=0.5), tmp_path, LIMIT)


def test_only_the_last_results_are_kept(tmp_path):
    from sanasr_cli.demo.session import _result_path

    paths = [_result_path(tmp_path, "cat", 4.0, keep=3) for _ in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3", "4"]
    assert paths[-1] == tmp_path / "4" / "cat_x4.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_gradio_one_line_and_exit_1(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` meets when it is not installed
    result = run("demo", "--model", "tiny", "--port", _free_port())
    assert result.exit_code == 1
    assert "pip install 'sanasr[demo]'" in one_error_line(result)


def test_host_beyond_loopback_warns_and_a_busy_port_is_exit_2():
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("demo", "--host", "0.0.0.0", "--port", port)
        loopback = run("demo", "--port", port)
    assert result.exit_code == 2
    assert "warning: --host 0.0.0.0 serves the demo beyond this machine" in result.output
    assert f"cannot serve on 0.0.0.0:{port}" in one_error_line(result)
    assert loopback.exit_code == 2 and "warning" not in loopback.output  # the default host: no warning
    assert f"cannot serve on 127.0.0.1:{port}" in one_error_line(loopback)


def test_max_pixels_must_be_positive():
    result = run("demo", "--max-pixels", "0")
    assert result.exit_code == 2 and "--max-pixels must be a number > 0" in one_error_line(result)


def test_the_help_names_the_extra_and_the_page_offers_the_models_the_docs_list(tmp_path):
    """Issue 35: `sanasr demo --help` said `pip install 'sanasr'` (Rich read `[demo]` as markup), and the page
    offered sana-600m-512-fast (for `bench` only) but not nano-fast, unlike docs/demo.md."""
    import re

    pytest.importorskip("gradio")
    from sanasr_cli.demo.app import DemoSettings, build_demo
    from sanasr_cli.demo.session import PipelineCache

    assert "pip install 'sanasr[demo]'" in run("demo", "--help").output
    page = build_demo(DemoSettings(model="nano", examples=[]), PipelineCache(device="cpu"), tmp_path)
    offered = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "model").choices
    names = [c[0] if isinstance(c, tuple) else c for c in offered]
    documented = re.search(r"a preset: (.*?), or a model directory", (REPO_ROOT / "docs" / "demo.md").read_text())
    assert names == re.findall(r"`([^`]+)`", documented.group(1)) == ["nano", "nano-fast", "tiny", "sana-600m-512"]
