"""Screenshots of the app on the shipped checkpoints, for the README: Compare (desktop and phone) and the Time-lapse
tab at the shipped run's plateau snapshot. (Train during validation, Curves during a run and the Explain views are
written by their browser tests with MLM_SCREENSHOT_DIR=docs, which need a live run or fixed inputs.)

    HF_HUB_OFFLINE=1 .venv/bin/python docs/screenshots.py      # writes docs/compare-*.png and docs/timelapse.png
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import free_port  # noqa: E402
from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from test_timelapse_browser import move_slider_to  # noqa: E402

DOCS = REPO / "docs"


def serve() -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("SPACE_ID", None)
    server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2)
            return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the app did not start")


def compare(browser, url: str, name: str, viewport: dict) -> None:
    page = browser.new_page(viewport=viewport)
    page.goto(url)
    for side in ("left", "right"):
        expect(page.locator(f"#{side}-chart .js-plotly-plot")).to_be_visible(timeout=60_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(DOCS / name), full_page=True)
    page.close()


def timelapse(browser, url: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url)
    page.get_by_role("tab", name="Time-lapse").click()
    caption = page.locator("#timelapse-caption")
    expect(caption).to_contain_text("Snapshot 4 of 4", timeout=60_000)
    move_slider_to(page, 0.34)  # the second of four snapshots: on the plateau
    expect(caption).to_contain_text("Snapshot 2 of 4", timeout=30_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(DOCS / "timelapse.png"), full_page=True)
    page.close()


def main() -> None:
    server, url = serve()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            compare(browser, url, "compare-desktop.png", {"width": 1400, "height": 900})
            compare(browser, url, "compare-phone.png", {"width": 390, "height": 844})
            timelapse(browser, url)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
