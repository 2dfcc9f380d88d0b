"""A teacher in headless Chromium opens the Explain tab: every view renders for both models, then reacts to input."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from conftest import running_app
from test_e2e_browser import SCREENSHOTS, page  # noqa: F401 - `page` is the fixture used below

VIEWS = ("candidates", "layers", "attention", "surprise", "training")
WAIT = 60_000  # the first visit loads both models; a busy 2-core machine answers the tab's views one after another


@pytest.fixture(scope="module")
def explain(page):
    """The student page of test_e2e_browser (Chromium on the app_server), on the Explain tab."""
    page.get_by_role("tab", name="Explain").click()
    return page


def screenshot_views(page, prefix: str = "explain") -> None:
    for view in VIEWS:
        page.locator(f"#view-{view}").screenshot(path=str(SCREENSHOTS / f"{prefix}-{view}.png"))


def test_every_view_renders_for_both_sides(explain):
    for side in ("left", "right"):
        expect(explain.locator(f"#{side}-candidates [role=grid]")).to_have_attribute("aria-rowcount", "5", timeout=WAIT)
        expect(explain.locator(f"#{side}-candidates-note")).to_contain_text("2 WordPieces")  # tokenization
        for plot in ("layers", "attention", "attention-average", "surprise"):
            expect(explain.locator(f"#{side}-{plot} .js-plotly-plot")).to_be_visible(timeout=WAIT)
        expect(explain.locator(f"#{side}-layers .ytick", has_text="embeddings")).to_have_count(1)
        expect(explain.locator(f"#{side}-attention-text")).to_contain_text("[MASK]")
        expect(explain.locator(f"#{side}-attention-note")).to_contain_text(re.compile(r"\d+ layers × \d+ heads"))
        expect(explain.locator(f"#{side}-surprise-note")).to_contain_text("Pseudo-log-likelihood", timeout=WAIT)
    # the contrast the view is for: 3 layers of 4 heads from scratch, MiniLM's 6 of 12
    expect(explain.locator("#left-attention-note")).to_contain_text("3 layers × 4 heads")
    expect(explain.locator("#right-attention-note")).to_contain_text("6 layers × 12 heads")
    expect(explain.locator("#left-layers .ytick", has_text="layer 3")).to_have_count(1)
    expect(explain.locator("#right-layers .ytick", has_text="layer 6")).to_have_count(1)
    expect(explain.locator("#minimal-pair [role=grid]")).to_have_attribute("aria-rowcount", "3", timeout=WAIT)
    expect(explain.locator("#minimal-pair")).to_contain_text(re.compile(r"[AB] \(by \d"))
    expect(explain.locator("#training-summary")).to_contain_text("Seed 0:", timeout=WAIT)
    expect(explain.locator("#training-view")).to_contain_text("[CLS]")
    screenshot_views(explain)


def test_the_views_follow_what_the_teacher_does(explain):
    words = explain.locator("#explain-words textarea")
    words.fill("paris, berlin")
    words.press("Enter")
    for side in ("left", "right"):
        expect(explain.locator(f"#{side}-candidates [role=grid]")).to_have_attribute("aria-rowcount", "3", timeout=WAIT)
        expect(explain.locator(f"#{side}-candidates")).to_contain_text("berlin")

    head = explain.locator("#right-attention-head input")  # pick one head of MiniLM's last layer
    head.click()
    explain.get_by_role("option", name="head 2", exact=True).click()
    expect(explain.locator("#right-attention-note")).to_contain_text("head 2", timeout=WAIT)
    expect(explain.locator("#left-attention-note")).to_contain_text("the average of its heads")

    surprise = explain.locator("#surprise-text textarea")
    surprise.fill("The keys to the [MASK] are here.")
    surprise.press("Enter")
    for side in ("left", "right"):
        expect(explain.locator(f"#{side}-surprise-note")).to_contain_text("without [MASK]", timeout=WAIT)

    explain.get_by_role("button", name="New sample").click()
    expect(explain.locator("#training-summary")).not_to_contain_text("Seed 0:", timeout=WAIT)
    summary = re.compile(r"Seed \d+: \d+ of \d+ tokens picked at 15%")
    expect(explain.locator("#training-summary")).to_contain_text(summary)

    sentence = explain.locator("#explain-text textarea")
    sentence.fill("Nothing to guess here.")
    explain.get_by_role("button", name="Explain", exact=True).click()
    for side in ("left", "right"):
        expect(explain.locator(f"#{side}-layers-note")).to_contain_text("no [MASK]", timeout=WAIT)
        expect(explain.locator(f"#{side}-candidates-note")).to_contain_text("no [MASK]")


def test_a_new_run_appears_in_the_explain_pickers_without_a_reload(explain, tmp_path):
    """A teacher keeps the Explain tab open while a run lands in checkpoints/: both pickers offer it within a few
    timer ticks, and picking it explains it (here a broken copy: the view says so). Its own app on an empty
    checkpoints folder, in the module's browser (one Playwright per process)."""
    (tmp_path / "checkpoints").mkdir()
    with running_app(tmp_path / "checkpoints", tmp_path / "app.log") as (url, _):
        page = explain.context.browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Explain").click()
        expect(page.locator("#left-candidates-note")).to_contain_text("⚠️", timeout=WAIT)  # no model yet
        run = tmp_path / "checkpoints" / "new-run"
        run.mkdir()
        (run / "config.json").write_text("{}")
        (run / "model.safetensors").write_bytes(b"not a safetensors file")
        for side in ("right", "left"):  # (the left's list stays open)
            page.locator(f"#explain-{side}-model input").click()
            option = page.locator(f"#explain-{side}-model").get_by_role("option", name="new-run")
            expect(option).to_be_visible(timeout=30_000)
        option.click()
        expect(page.locator("#explain-left-model input")).to_have_value("new-run")
        expect(page.locator("#left-candidates-note")).to_contain_text("cannot load the checkpoint", timeout=WAIT)
        page.close()
