"""`sanasr demo` served by a real process and driven in a real headless Chromium: the page's result is the
Python API's, a bad upload is an error on the page and the next request is served, nothing is fetched from
outside, the server listens on loopback only and stops cleanly on Ctrl-C.

Needs Debian's chromium and chromium-driver (.ci/run installs them when missing): skipped, with the reason in
capitals in pytest's summary, only where they cannot be installed."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

from tests.demo_browser import DemoPage, DemoServer, browser, browser_missing, fetch_image, requested_urls
from tests.helpers import REPO_ROOT, make_photo_like

EXAMPLES = REPO_ROOT / "examples" / "lq"
MAX_MEGAPIXELS = 0.006  # the 64 x 64 examples (0.0041 MP) pass, an 80 x 80 photo (0.0064 MP) is refused

_missing = browser_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"BROWSER TEST SKIPPED: {_missing}")


@pytest.fixture(scope="module")
def server():
    with DemoServer(["--model", "tiny", "--max-pixels", str(MAX_MEGAPIXELS)]) as running:
        yield running


@pytest.fixture(scope="module")
def page(server):
    with browser() as driver:
        yield DemoPage(driver, server.url)


def _api_result(name: str) -> np.ndarray:
    """What the Python API returns for the example with the page's defaults (scale 4, tile auto, wavelet)."""
    from sanasr_cli import SanaSRPipeline

    pipe = SanaSRPipeline.from_pretrained("tiny", seed=0)
    return np.asarray(pipe(Image.open(EXAMPLES / name)).images[0])


def _assert_close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 2 and diff.mean() < 0.1, (diff.max(), diff.mean())  # 8-bit rounding, never more


def test_the_page_gives_the_python_apis_result(server, page, tmp_path):
    page.upload(EXAMPLES / "cat.png")
    assert "cat.png: 64 x 64" in page.text("#info")
    page.run()
    bicubic_url, sr_url = page.wait_for_result()
    info = page.text("#info")
    assert "prompt: clean, extremely detailed" in info and "seconds:" in info
    sr, expected = fetch_image(sr_url), _api_result("cat.png")
    _assert_close(sr, expected)
    _assert_close(fetch_image(page.download_url()), expected)  # the full-resolution PNG is the same image
    bicubic = fetch_image(bicubic_url)
    assert bicubic.shape == sr.shape == (256, 256, 3)
    lq = np.asarray(Image.open(EXAMPLES / "cat.png").convert("RGB"))
    assert abs(float(bicubic[::4, ::4].mean()) - float(lq.mean())) < 3  # bicubic of the input, not the SR
    assert np.abs(bicubic.astype(int) - sr.astype(int)).mean() > 5  # tiny's SR is far from bicubic
    shot = page.screenshot(tmp_path / "demo.png")
    assert Image.open(shot).size[0] >= 1000
    outside = [u for u in requested_urls(page.driver) if _is_remote(u, server.port)]
    assert outside == []


def test_a_bad_upload_is_an_error_on_the_page_and_the_next_request_is_served(page, tmp_path):
    previous = tuple(page.slider_urls()[:2])
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    page.upload(notes)
    info = page.wait_for_info("error:")
    assert "notes.txt: not a recognised image file" in info and str(tmp_path) not in info
    page.run()  # pressing Upscale anyway: the same error, no result
    assert "notes.txt: not a recognised image file" in page.wait_for_info("error:")
    big = tmp_path / "big.png"
    Image.fromarray(make_photo_like(80, 80)).save(big)
    page.upload(big)
    assert "above this demo's limit of 0.006 MP (--max-pixels)" in page.wait_for_info("big.png is 80 x 80")
    page.upload(EXAMPLES / "coffee.png")
    page.run()
    _, sr_url = page.wait_for_result(previous)
    _assert_close(fetch_image(sr_url), _api_result("coffee.png"))


def test_the_server_listens_on_loopback_only(server):
    import psutil

    listening = [
        c.laddr for c in psutil.Process(server.proc.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN
    ]
    assert [a.port for a in listening] == [server.port]
    assert {a.ip for a in listening} == {"127.0.0.1"}


def test_ctrl_c_stops_the_server_cleanly(server, page):
    assert server.stop() == 0
    assert "Traceback" not in server.output and "sanasr demo: stopped" in server.output
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server.port)) != 0  # nothing listens any more


def _is_remote(url: str, port: int) -> bool:
    """A request that left the machine: http(s)/ws(s) to anything but the demo's own address."""
    if url.split(":", 1)[0] not in ("http", "https", "ws", "wss"):
        return False  # data:, blob:, chrome:// (the browser's own new-tab page)
    return not url.split("://", 1)[1].startswith((f"127.0.0.1:{port}/", f"localhost:{port}/"))
