"""A student in headless Chromium (Debian's `chromium`, driven by Playwright): type, submit, read both columns."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from mlm.ui.app import TICK_SECONDS

CHROMIUM = os.environ.get("MLM_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling home, which floods a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(os.environ.get("MLM_SCREENSHOT_DIR", "/tmp"))


@pytest.fixture(scope="module")
def page(app_server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app_server)
        yield page
        browser.close()


def test_a_student_compares_both_models(page):
    for side in ("left", "right"):  # the page opens with the first example answered
        expect(page.locator(f"#{side}-filled textarea")).to_have_value(re.compile(r"^The capital of France is "),
                                                                       timeout=30_000)
    sentence = page.get_by_label("Sentence")
    sentence.fill("")
    sentence.press_sequentially("<b>Paris</b> is the [mask] of France.", delay=10)
    page.get_by_role("button", name="Predict").click()
    for side in ("left", "right"):
        expect(page.locator(f"#{side}-filled textarea")).to_have_value(re.compile(r"^<b>Paris</b> is the .+ of France\.$"),
                                                                       timeout=30_000)
        expect(page.locator(f"#{side}-table [role=grid]")).to_have_attribute("aria-rowcount", "6")  # heading + top-5
        expect(page.locator(f"#{side}-chart .js-plotly-plot")).to_be_visible()
    assert page.locator("b", has_text="Paris").count() == 0  # the markup was shown as text, not rendered
    page.screenshot(path=str(SCREENSHOTS / "compare.png"), full_page=True)


def test_bad_input_shows_a_message_and_the_other_column_still_answers(page):
    picker = page.locator("#right-model input")
    picker.click()
    page.get_by_role("option", name="broken-run").click()
    expect(picker).to_have_value("broken-run")
    sentence = page.get_by_label("Sentence")
    sentence.fill("Where is the [MASK]?")
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#right-filled textarea")).to_have_value(re.compile(r"^⚠️ cannot load the checkpoint"),
                                                                  timeout=30_000)
    expect(page.locator("#left-filled textarea")).to_have_value(re.compile(r"^Where is the .+\?$"))
    sentence.fill("No mask at all.")
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#left-filled textarea")).to_have_value(re.compile(r"^⚠️ Your sentence has no \[MASK\]"),
                                                                 timeout=30_000)


def test_the_pages_timer_ticks_without_an_error_in_the_servers_log(page, app_server, app_project):
    """Every open page's timer asks the server what changed every TICK_SECONDS; a tick that answered for fewer
    outputs than the timer has (it once returned 10 values for 12 when nothing had changed) raised a ValueError each
    time, its traceback in the log. A few ticks of a page left alone, then the log's new part has none."""
    log = app_project / "app.log"
    seen = log.stat().st_size
    fresh = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})  # beside the module's page
    fresh.goto(app_server)
    expect(fresh.locator("#left-filled textarea")).to_have_value(re.compile(r"^The capital of France is "),
                                                                timeout=30_000)
    fresh.wait_for_timeout(3 * TICK_SECONDS * 1000)  # three ticks with nothing new to show
    fresh.close()
    written = log.read_bytes()[seen:].decode(errors="replace")
    assert "Traceback" not in written and "ValueError" not in written, written[-3000:]
