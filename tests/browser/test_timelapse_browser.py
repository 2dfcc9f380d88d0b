"""A student in headless Chromium watches a run's guesses form: the Time-lapse tab, its slider, its Play button
and its chart."""

from __future__ import annotations

import re
import shutil
import time

from gradio_client import Client
from playwright.sync_api import expect

from conftest import REPO, SCRATCH_NAME, running_app
from mlm.ui.plots.guesses import percent
from test_e2e_browser import SCREENSHOTS, page  # noqa: F401 - the module-scoped browser page fixture


def column_js(column: int) -> str:
    return (f"""() => [...document.querySelectorAll('#timelapse-table [role=gridcell][data-col="{column}"]')]"""
            ".map(cell => cell.innerText.trim()).join('|')")


TOKENS_JS, PROBABILITIES_JS = column_js(0), column_js(1)
FRAME_JS = f"""() => [document.querySelector('#timelapse-caption').innerText,
    document.querySelector('#timelapse-step input[type=range]').value, ({TOKENS_JS})(), ({PROBABILITIES_JS})()]"""
CAPTION = re.compile(r"Snapshot (\d+) of (\d+): step ([\d,]+)")
# Every caption the page shows, however briefly, with when (in seconds): a frame's table is read by polling, which
# could miss a frame that a slow tick left on screen only a moment.
RECORD_CAPTIONS_JS = """() => { const caption = document.querySelector('#timelapse-caption'); window.captions = [];
    new MutationObserver(() => window.captions.push([caption.innerText, performance.now() / 1000]))
        .observe(caption, {subtree: true, childList: true, characterData: true}); }"""


def table_tokens(page) -> list[str]:
    return page.evaluate(TOKENS_JS).split("|")


def watch_frames(page, until, timeout_s: float = 90) -> dict[int, dict]:
    """What the page shows, read twenty times a second until `until(frames)` holds: per snapshot number, the
    slider's value, the step and the table's guesses and probabilities. A reading counts once it is seen twice in
    a row, so a frame caught half redrawn is never recorded."""
    frames, previous, deadline = {}, None, time.monotonic() + timeout_s
    while not until(frames):
        assert time.monotonic() < deadline, f"timed out; frames seen: {sorted(frames)}"
        reading = page.evaluate(FRAME_JS)
        shown = CAPTION.search(reading[0])
        if reading == previous and shown:
            number = int(shown.group(1))
            frames[number] = {"slider": int(reading[1]), "step": int(shown.group(3).replace(",", "")),
                              "tokens": reading[2].split("|"), "probabilities": reading[3].split("|")}
        previous = reading
        page.wait_for_timeout(50)
    return frames


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


def test_play_steps_through_every_snapshot_and_stops_at_the_last(page, app_server):
    page.get_by_role("tab", name="Time-lapse").click()
    expect(page.locator("#timelapse-run input")).to_have_value(SCRATCH_NAME, timeout=30_000)
    text = "Paris is the [MASK] of France."
    sentence = page.locator("#timelapse-text textarea")
    sentence.fill(text)
    sentence.press("Enter")
    expect(page.locator("#timelapse-filled textarea")).to_have_value(re.compile(r"^Paris is the .+ of France\.$"),
                                                                     timeout=60_000)
    caption, play = page.locator("#timelapse-caption"), page.locator("#timelapse-play")
    expect(caption).to_contain_text("Snapshot 4 of 4")
    page.evaluate(RECORD_CAPTIONS_JS)
    play.click()  # at the last snapshot, Play starts again from the first
    expect(play).to_have_text(re.compile("Pause"), timeout=30_000)
    frames = watch_frames(page, lambda frames: 4 in frames and 1 in frames)
    expect(play).to_have_text(re.compile("Play"), timeout=30_000)  # it stopped by itself
    shown = [(int(found.group(1)), when) for text, when in page.evaluate("() => window.captions")
             if (found := CAPTION.search(text))]
    shown = shown[[number for number, _ in shown].index(1):]  # (before the first, the last still shows)
    order = [number for i, (number, _) in enumerate(shown) if i == 0 or number != shown[i - 1][0]]
    assert order == [1, 2, 3, 4]  # every snapshot was shown, one after the other
    first_shown = {number: min(when for n, when in shown if n == number) for number in order}
    assert first_shown[4] - first_shown[1] > 2.5  # about a second each, not all at once
    assert set(frames) >= {1, 4} and all(frame["slider"] == n - 1 for n, frame in frames.items())  # slider moved
    assert len({tuple(frames[n]["tokens"]) for n in frames}) > 1  # the top-k changed over training
    client = Client(app_server, verbose=False)
    for number, frame in frames.items():  # each frame shows the API's answer for its snapshot
        answer = client.predict(text, 5, SCRATCH_NAME, frame["step"], api_name="/fill_mask_at")
        candidates = answer["masks"][0]["candidates"]
        assert frame["tokens"] == [c["token"] for c in candidates], number
        assert frame["probabilities"] == [percent(c["score"]) for c in candidates], number
    page.wait_for_timeout(2500)
    expect(caption).to_contain_text("Snapshot 4 of 4")  # and stays stopped

    move_slider_to(page, 0.0)
    expect(caption).to_contain_text("Snapshot 1 of 4", timeout=30_000)
    play.click()  # from where the slider is
    expect(caption).to_contain_text("Snapshot 2 of 4", timeout=30_000)
    play.click()  # a second click pauses
    expect(play).to_have_text(re.compile("Play"), timeout=30_000)
    paused = CAPTION.search(caption.inner_text()).group(0)
    page.wait_for_timeout(2500)
    assert CAPTION.search(caption.inner_text()).group(0) == paused and "Snapshot 4 of 4" not in paused


def test_a_run_with_snapshots_appears_without_a_reload(page, tmp_path):
    """A student keeps the Time-lapse tab open on an app with no run yet; a run with snapshots lands in
    checkpoints/ (here a copy of the shipped one): within a few timer ticks the picker offers and shows it, and its
    story renders. Its own app on an empty checkpoints folder, in the module's browser."""
    (tmp_path / "checkpoints").mkdir()
    with running_app(tmp_path / "checkpoints", tmp_path / "app.log") as (url, _):
        student = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})
        student.goto(url)
        student.get_by_role("tab", name="Time-lapse").click()
        expect(student.locator("#timelapse-run input")).to_have_value("", timeout=30_000)
        student.wait_for_timeout(3_000)  # a tick or two with nothing to offer
        expect(student.locator("#timelapse-run input")).to_have_value("")
        shutil.copytree(REPO / "checkpoints" / "scratch-wikitext2", tmp_path / "checkpoints" / "landed-run")
        expect(student.locator("#timelapse-run input")).to_have_value("landed-run", timeout=30_000)
        expect(student.locator("#timelapse-caption")).to_contain_text("Snapshot 4 of 4", timeout=60_000)
        expect(student.locator("#timelapse-history .js-plotly-plot")).to_be_visible()
        student.close()


def test_on_a_phone_the_run_picker_shows_the_whole_name(page, app_server):
    """At 390 px the tab sits behind the tab bar's "More tabs" button; there the sentence, the run picker and the
    snapshot slider each take a whole line, so the run's name is not cut, and the snapshot can still be moved."""
    phone = page.context.browser.new_page(viewport={"width": 390, "height": 900})
    try:
        phone.goto(app_server)
        phone.get_by_role("button", name="More tabs").click()
        phone.locator("button:visible", has_text="Time-lapse").last.click()
        picker = phone.locator("#timelapse-run input")
        expect(picker).to_have_value(SCRATCH_NAME, timeout=30_000)
        expect(phone.locator("#timelapse-caption")).to_contain_text("Snapshot 4 of 4", timeout=60_000)
        assert picker.evaluate("e => e.scrollWidth <= e.clientWidth")  # the whole name fits
        text_box, run_box = phone.locator("#timelapse-text").bounding_box(), phone.locator("#timelapse-run").bounding_box()
        assert run_box["y"] >= text_box["y"] + text_box["height"] and run_box["width"] > 300  # a line of its own
        move_slider_to(phone, 0.0)
        expect(phone.locator("#timelapse-caption")).to_contain_text("Snapshot 1 of 4", timeout=30_000)
        phone.screenshot(path=str(SCREENSHOTS / "timelapse_phone.png"), full_page=True)
    finally:
        phone.close()
