"""A student on the Compare tab in headless Chromium, against the app serving the shipped checkpoints: every change
of input re-predicts, and what each column shows is the API's answer for what is on screen."""

from __future__ import annotations

import re
import time

import pytest
from gradio_client import Client
from playwright.sync_api import expect, sync_playwright

from conftest import LORA_NAME, REPO, SCRATCH_NAME, running_app
from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS

SIDES = ("left", "right")
# The shipped models rank a quote first here, which the old charts drew as the literal text &quot;
QUOTE_SENTENCE = 'The song [MASK] Hello " was a hit .'


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory):
    with running_app(REPO / "checkpoints", tmp_path_factory.mktemp("shipped") / "app.log", SPACE_ID="") as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(shipped_server) -> Client:
    return Client(shipped_server, verbose=False)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str, width: int, height: int):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    for side in SIDES:  # the page opens with the first example answered
        expect(page.locator(f"#{side}-filled textarea")).to_have_value(re.compile(r"^The capital of France is"),
                                                                       timeout=60_000)
    return page


@pytest.fixture(scope="module")
def page(browser, shipped_server):
    page = open_page(browser, shipped_server, 1400, 900)
    yield page
    page.close()


def table_guesses(page, side: str) -> list[str]:
    return page.locator(f"#{side}-table").evaluate(
        "e => Array.from(e.querySelectorAll('[role=row]')).slice(1)"
        ".map(r => Array.from(r.querySelectorAll('td, [role=gridcell]')).map(c => c.innerText.trim())[0])")


def chart_labels(page, side: str) -> list[str]:
    return page.locator(f"#{side}-chart").evaluate(
        "e => Array.from(e.querySelectorAll('g.ytick text')).map(t => t.textContent).reverse()")


def expect_answers(page, client, text: str, top_k: int, models: dict[str, str], timeout_s: float = 60):
    """Each listed side's table and chart come to show exactly the API's guesses for these inputs."""
    answers = client.predict(text, top_k, models.get("left", SCRATCH_NAME), models.get("right", LORA_NAME),
                             api_name="/fill_mask")
    deadline = time.monotonic() + timeout_s
    for side in models:
        expected = [c["token"] for mask in answers[side]["masks"] for c in mask["candidates"]]
        assert len(expected) == top_k * len(answers[side]["masks"])
        while (shown := table_guesses(page, side)) != expected:
            assert time.monotonic() < deadline, f"{side} shows {shown}, the API answers {expected}"
            time.sleep(0.3)
        while len(answers[side]["masks"]) == 1 and (drawn := chart_labels(page, side)) != expected:
            assert time.monotonic() < deadline, f"{side}'s chart shows {drawn}, the API answers {expected}"
            time.sleep(0.3)
        expect(page.locator(f"#{side}-filled textarea")).to_have_value(answers[side]["filled"])
    return answers


def pick(page, side: str, model: str):
    page.locator(f"#{side}-model input").click()
    page.get_by_role("option", name=model).click()


def test_every_change_of_input_re_predicts(page, client):
    text = "The capital of France is [MASK]."
    expect_answers(page, client, text, 5, {"left": SCRATCH_NAME, "right": LORA_NAME})

    pick(page, "left", LORA_NAME)  # the picker alone: the left column answers for the new model
    expect_answers(page, client, text, 5, {"left": LORA_NAME})
    expect(page.locator("#left-card")).to_contain_text(LORA_NAME)

    top_k = page.locator("#top-k input[type=number]")
    top_k.fill("8")
    top_k.press("Enter")  # top-k alone: both columns show 8 rows
    expect_answers(page, client, text, 8, {"left": LORA_NAME, "right": LORA_NAME})

    example = "The keys to the cabinet [MASK] on the table."
    page.locator(".gallery-item", has_text=example).click()  # an example alone: both answer it
    expect(page.locator("#sentence textarea")).to_have_value(example)
    expect_answers(page, client, example, 8, {"left": LORA_NAME, "right": LORA_NAME})

    pick(page, "left", SCRATCH_NAME)
    expect_answers(page, client, example, 8, {"left": SCRATCH_NAME})


def current(page, side: str) -> str:
    return page.locator(f"#{side}-model input").input_value()


def current_top_k(page) -> int:
    return int(page.locator("#top-k input[type=number]").input_value())


def test_enter_predicts(page, client):
    sentence = page.locator("#sentence textarea")
    sentence.fill("Paris is the [MASK] of France.")
    for side in SIDES:  # until predicted, the answers for the old sentence are greyed out
        expect(page.locator(f"#{side}-table")).to_have_css("opacity", "0.35")
    sentence.press("Enter")
    expect(sentence).to_have_value("Paris is the [MASK] of France.")  # no newline: Enter submitted
    expect_answers(page, client, "Paris is the [MASK] of France.", current_top_k(page),
                   {side: current(page, side) for side in SIDES})
    for side in SIDES:
        expect(page.locator(f"#{side}-table")).to_have_css("opacity", "1")
    page.screenshot(path=str(SCREENSHOTS / "compare-desktop.png"), full_page=True)


def test_both_charts_share_one_fixed_scale_and_a_quote_is_a_quote(page, client):
    sentence = page.locator("#sentence textarea")
    sentence.fill(QUOTE_SENTENCE)
    sentence.press("Enter")
    models = {side: current(page, side) for side in SIDES}
    answers = expect_answers(page, client, QUOTE_SENTENCE, current_top_k(page), models)
    assert any(c["token"] == '"' for side in SIDES for c in answers[side]["masks"][0]["candidates"])
    for side in SIDES:
        labels = chart_labels(page, side)
        assert not any("&quot;" in label or "&amp;" in label for label in labels)
        x_range = page.locator(f"#{side}-chart .js-plotly-plot").evaluate("e => e._fullLayout.xaxis.range")
        assert x_range == [0, 1]  # 0-100% on both sides, whatever the guesses
    # the table says the same percentages as the chart's bar labels
    left_bars = page.locator("#left-chart").evaluate(
        "e => Array.from(e.querySelectorAll('.bartext')).map(t => t.textContent).reverse()")
    left_rows = page.locator("#left-table").evaluate(
        "e => Array.from(e.querySelectorAll('[role=row]')).slice(1)"
        ".map(r => r.querySelectorAll('td, [role=gridcell]')[1].innerText.trim())")
    assert left_bars == left_rows and all(value.endswith("%") for value in left_rows)


def test_a_long_paste_is_called_too_long(page):
    sentence = page.locator("#sentence textarea")
    sentence.fill("The river flows . " * 300 + "The [MASK] is red.")  # 5,418 characters, the mask at the end
    sentence.press("Enter")
    for side in SIDES:
        expect(page.locator(f"#{side}-filled textarea")).to_have_value(re.compile(r"^⚠️ .*too long", re.I),
                                                                     timeout=60_000)


PICKER_TEXT_END_AND_ARROW_JS = """picker => { const input = picker.querySelector('input'), style = getComputedStyle(input);
    const end = input.getBoundingClientRect().right - parseFloat(style.paddingRight);
    return [style.textOverflow === 'ellipsis' ? end : Infinity, picker.querySelector('.icon-wrap').getBoundingClientRect().left]; }"""


def test_on_a_phone_both_answers_are_side_by_side(browser, shipped_server):
    phone = open_page(browser, shipped_server, 390, 844)
    try:
        rows = {side: phone.locator(f"#{side}-table [role=row][aria-rowindex='2']") for side in SIDES}
        for side, row in rows.items():
            expect(row).to_be_visible()
            expect(phone.locator(f"#{side}-chart .js-plotly-plot")).to_be_visible(timeout=60_000)
        boxes = {side: row.bounding_box() for side, row in rows.items()}
        assert abs(boxes["left"]["y"] - boxes["right"]["y"]) < 844  # both top-1 guesses on one screen
        tables = {side: phone.locator(f"#{side}-table").bounding_box() for side in SIDES}
        assert tables["left"]["x"] + tables["left"]["width"] <= tables["right"]["x"]  # next to each other
        for side in SIDES:  # each table fits its half: no sideways scrolling, "in the sentence" left out
            viewport = phone.locator(f"#{side}-table .virtual-table-viewport")
            assert viewport.evaluate("v => v.scrollWidth <= v.clientWidth"), side
            expect(phone.locator(f"#{side}-table [role=columnheader]", has_text="in the sentence")).to_be_hidden()
            expect(phone.locator(f"#{side}-table [role=columnheader]", has_text="prob.")).to_be_visible()
            # the picker's name ends in "…" before its arrow, not under it (the card below names the model whole)
            text_end, arrow = phone.locator(f"#{side}-model").evaluate(PICKER_TEXT_END_AND_ARROW_JS)
            assert text_end <= arrow, side
        phone.screenshot(path=str(SCREENSHOTS / "compare-phone.png"), full_page=True)
    finally:
        phone.close()
