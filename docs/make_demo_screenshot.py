"""The screenshot of docs/demo.md: `sanasr demo --model nano` served for real, a headless Chromium uploads
examples/lq/cat.png, presses Upscale and saves the page once the slider shows the result (the same server and
browser helpers as tests/test_demo_browser.py).

    python docs/make_demo_screenshot.py                  # -> docs/images/demo.png
    python docs/make_demo_screenshot.py --model tiny --out /tmp/demo.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.demo_browser import DemoPage, DemoServer, browser, browser_missing  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="nano")
    parser.add_argument("--photo", type=Path, default=REPO_ROOT / "examples" / "lq" / "cat.png")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "images" / "demo.png")
    args = parser.parse_args()
    missing = browser_missing()
    if missing:
        sys.exit(f"error: {missing}")
    with DemoServer(["--model", args.model]) as server, browser() as driver:
        page = DemoPage(driver, server.url)
        page.upload(args.photo)
        page.run()
        page.wait_for_result()
        print(page.text("#info"))
        page.screenshot(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
