"""A teacher in headless Chromium opens the Explain tab: every view renders for both models, then reacts to input."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect, sync_playwright

from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS

VIEWS = ("candidates", "layers", "attention", "surprise", "training")
WAIT = 60_000  # the first visit loads both models; a busy 2-core machine answers the tab's views one after another


@pytest.fixture(scope="module")
def page(app_server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app_server)
        page.get_by_role("tab", name="Explain").click()
        yield page
        browser.close()


def screenshot_views(page, prefix: str = "explain") -> None:
    for view in VIEWS:
        page.locator(f"#view-{view}").screenshot(path=str(SCREENSHOTS / f"{prefix}-{view}.png"))


def test_every_view_renders_for_both_sides(page):
    for side in ("left", "right"):
        expect(page.locator(f"#{side}-candidates [role=grid]")).to_have_attribute("aria-rowcount", "5", timeout=WAIT)
        expect(page.locator(f"#{side}-candidates-note")).to_contain_text("2 WordPieces")  # tokenization
        for plot in ("layers", "attention", "attention-average", "surprise"):
            expect(page.locator(f"#{side}-{plot} .js-plotly-plot")).to_be_visible(timeout=WAIT)
        expect(page.locator(f"#{side}-layers .ytick", has_text="embeddings")).to_have_count(1)
        expect(page.locator(f"#{side}-attention-text")).to_contain_text("[MASK]")
        expect(page.locator(f"#{side}-attention-note")).to_contain_text(re.compile(r"\d+ layers × \d+ heads"))
        expect(page.locator(f"#{side}-surprise-note")).to_contain_text("Pseudo-log-likelihood", timeout=WAIT)
    # the contrast the view is for: 3 layers of 4 heads from scratch, MiniLM's 6 of 12
    expect(page.locator("#left-attention-note")).to_contain_text("3 layers × 4 heads")
    expect(page.locator("#right-attention-note")).to_contain_text("6 layers × 12 heads")
    expect(page.locator("#left-layers .ytick", has_text="layer 3")).to_have_count(1)
    expect(page.locator("#right-layers .ytick", has_text="layer 6")).to_have_count(1)
    expect(page.locator("#minimal-pair [role=grid]")).to_have_attribute("aria-rowcount", "3", timeout=WAIT)
    expect(page.locator("#minimal-pair")).to_contain_text(re.compile(r"[AB] \(by \d"))
    expect(page.locator("#training-summary")).to_contain_text("Seed 0:", timeout=WAIT)
    expect(page.locator("#training-view")).to_contain_text("[CLS]")
    screenshot_views(page)


def test_the_views_follow_what_the_teacher_does(page):
    words = page.locator("#explain-words textarea")
    words.fill("paris, berlin")
    words.press("Enter")
    for side in ("left", "right"):
        expect(page.locator(f"#{side}-candidates [role=grid]")).to_have_attribute("aria-rowcount", "3", timeout=WAIT)
        expect(page.locator(f"#{side}-candidates")).to_contain_text("berlin")

    head = page.locator("#right-attention-head input")  # pick one head of MiniLM's last layer
    head.click()
    page.get_by_role("option", name="head 2", exact=True).click()
    expect(page.locator("#right-attention-note")).to_contain_text("head 2", timeout=WAIT)
    expect(page.locator("#left-attention-note")).to_contain_text("the average of its heads")

    surprise = page.locator("#surprise-text textarea")
    surprise.fill("The keys to the [MASK] are here.")
    surprise.press("Enter")
    for side in ("left", "right"):
        expect(page.locator(f"#{side}-surprise-note")).to_contain_text("without [MASK]", timeout=WAIT)

    page.get_by_role("button", name="New sample").click()
    expect(page.locator("#training-summary")).not_to_contain_text("Seed 0:", timeout=WAIT)
    expect(page.locator("#training-summary")).to_contain_text(re.compile(r"Seed \d+: \d+ of \d+ tokens picked at 15%"))

    sentence = page.locator("#explain-text textarea")
    sentence.fill("Nothing to guess here.")
    page.get_by_role("button", name="Explain", exact=True).click()
    for side in ("left", "right"):
        expect(page.locator(f"#{side}-layers-note")).to_contain_text("no [MASK]", timeout=WAIT)
        expect(page.locator(f"#{side}-candidates-note")).to_contain_text("no [MASK]")
