"""A student in headless Chromium watches a run's guesses form: the Time-lapse tab, its slider and its chart."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from conftest import SCRATCH_NAME
from test_e2e_browser import SCREENSHOTS, page  # noqa: F401 - the module-scoped browser page fixture


TOKENS_JS = """() => [...document.querySelectorAll('#timelapse-table [role=gridcell][data-col="1"]')]
    .map(cell => cell.innerText.trim()).join('|')"""


def table_tokens(page) -> list[str]:
    return page.evaluate(TOKENS_JS).split("|")


def move_slider_to(page, fraction: float) -> None:
    """Click the slider's track where a student would (a pointer press and release, as a drag ends)."""
    track = page.locator("#timelapse-step input[type=range]")
    box = track.bounding_box()
    page.mouse.click(box["x"] + 2 + fraction * (box["width"] - 4), box["y"] + box["height"] / 2)


def test_moving_the_slider_redraws_the_top_k(page):
    page.get_by_role("tab", name="Time-lapse").click()
    expect(page.locator("#timelapse-run input")).to_have_value(SCRATCH_NAME, timeout=30_000)
    caption = page.locator("#timelapse-caption")
    expect(caption).to_contain_text("Snapshot 4 of 4", timeout=60_000)  # opens at the final model
    expect(page.locator("#timelapse-history .js-plotly-plot")).to_be_visible()
    expect(page.locator("#timelapse-table [role=grid]")).to_have_attribute("aria-rowcount", "6")  # heading + top-5
    final = table_tokens(page)
    assert len(final) == 5
    move_slider_to(page, 0.0)
    expect(caption).to_contain_text("Snapshot 1 of 4: step 0", timeout=30_000)
    expect(page.locator("#timelapse-filled textarea")).not_to_have_value("")
    page.wait_for_function(f"(final) => ({TOKENS_JS})() !== final", arg="|".join(final), timeout=30_000)
    random_start = table_tokens(page)
    assert random_start != final  # the random start guesses other words
    move_slider_to(page, 1.0)
    expect(caption).to_contain_text("Snapshot 4 of 4", timeout=30_000)
    page.wait_for_function(f"(final) => ({TOKENS_JS})() === final", arg="|".join(final), timeout=30_000)
    sentence = page.locator("#timelapse-text textarea")
    sentence.fill("The [MASK] of the river is in the [MASK] mountains.")
    sentence.press("Enter")
    expect(page.locator("#timelapse-filled textarea")).to_have_value(
        re.compile(r"^The .+ of the river is in the .+ mountains\.$"), timeout=60_000)
    expect(page.locator("#timelapse-history .subplot")).to_have_count(3)  # two masks and the loss, one x axis
    page.screenshot(path=str(SCREENSHOTS / "timelapse.png"), full_page=True)
