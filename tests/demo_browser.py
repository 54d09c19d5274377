"""A real `sanasr demo` server and a real headless Chromium driving its page (Selenium and Debian's chromium +
chromium-driver), shared by tests/test_demo_browser.py and docs/make_demo_screenshot.py.

    with DemoServer(["--model", "tiny"]) as server, browser() as driver:
        page = DemoPage(driver, server.url)
        page.upload(path); page.run(); page.wait_for_result()
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import REPO_ROOT, child_env

CHROMIUM = os.environ.get("SANASR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SANASR_CHROMEDRIVER", "/usr/bin/chromedriver")
# what works headless as root on a machine with no GPU and no outside network
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1000",
]  # fmt: skip


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found: apt-get install -y chromium chromium-driver (.ci/run does)"
    try:
        import gradio  # noqa: F401
        import selenium  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed: pip install -e '.[dev]'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoServer:
    """`python -m sanasr_cli demo ARGS --port <free>` as a real process importing this checkout's code; waits
    until the page answers; stopped with SIGINT (Ctrl-C) on exit, `returncode` and `output` kept."""

    def __init__(self, args: list[str], timeout: float = 300.0):
        self.args, self.timeout, self.port = list(args), timeout, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.output, self.returncode = "", None

    def __enter__(self) -> DemoServer:
        env = child_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sanasr_cli", "demo", *self.args, "--port", str(self.port)],
            cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sanasr demo exited with {self.proc.returncode}:\n{self.read_output()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "/", timeout=5) as r:
                    if r.status == 200:
                        return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"sanasr demo did not answer within {self.timeout:.0f} s:\n{self.output}")

    def read_output(self) -> str:
        self._log.seek(0)
        return self._log.read()

    def stop(self, timeout: float = 180.0) -> int:  # a loaded 2-core machine: Gradio closes slowly
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode if self.proc is not None else None
        self.output = self.read_output()
        return self.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
        self._log.close()


@contextlib.contextmanager
def browser():
    """A headless Chromium (new empty profile) driven by chromedriver, with its network log on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="sanasr-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for since the last call (Chrome's performance log: Network.requestWillBeSent)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def fetch_image(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


class DemoPage:
    """The demo page's controls, found by the elem_id each has in sanasr_cli/demo/app.py."""

    def __init__(self, driver, url: str, timeout: float = 120.0):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.timeout = driver, timeout
        self.wait = WebDriverWait(driver, timeout, poll_frequency=0.2)
        driver.get(url)
        self.wait.until(lambda d: d.find_elements("css selector", "#run"))

    def upload(self, path: Path) -> None:
        """Send a file to the photo upload (clearing the one there first), and wait until the page lists it."""
        name = Path(path).name
        clear = self.driver.find_elements("css selector", "#photo button[aria-label=Clear]")
        if clear:
            clear[0].click()
        self.wait.until(lambda d: d.find_elements("css selector", "#photo input[type=file]"))
        self.driver.find_element("css selector", "#photo input[type=file]").send_keys(str(Path(path).resolve()))
        self.wait.until(lambda d: d.find_elements("css selector", f'#photo td.filename[aria-label="{name}"]'))
        self.wait.until(lambda d: name in self.text("#info"))

    def text(self, selector: str) -> str:
        found = self.driver.find_elements("css selector", selector)
        return found[0].text if found else ""

    def run(self) -> None:
        self.driver.find_element("css selector", "#run").click()

    def wait_for_info(self, contains: str) -> str:
        self.wait.until(lambda d: contains in self.text("#info"))
        return self.text("#info")

    def slider_urls(self) -> list[str]:
        return [img.get_attribute("src") for img in self.driver.find_elements("css selector", "#result img")]

    def wait_for_result(self, previous: tuple[str, ...] = ()) -> tuple[str, str]:
        """(bicubic URL, SR URL) of the slider once it shows a new pair, and the info text says how long."""
        self.wait.until(lambda d: len(self.slider_urls()) >= 2 and tuple(self.slider_urls()[:2]) != previous)
        self.wait_for_info("seconds:")
        bicubic, sr = self.slider_urls()[:2]
        return bicubic, sr

    def download_url(self) -> str:
        self.wait.until(lambda d: d.find_elements("css selector", "#download a[href]"))
        return self.driver.find_element("css selector", "#download a[href]").get_attribute("href")

    def screenshot(self, path: Path, width: int = 1280) -> Path:
        """The whole page (window grown to its height) as a PNG at `path`."""
        for _ in range(2):  # the page reflows at the new width: measure again
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(width, min(int(height) + 120, 2400))
        self.driver.execute_script("window.scrollTo(0, 0)")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return Path(path)
