"""A teacher watches a run train on the Curves tab, in headless Chromium: the app is served in this process (so the
test can start and end the run), beside two finished runs thousands of steps long, as the shipped ones are."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
from playwright.sync_api import sync_playwright

from conftest import REPO, WIKITEXT_DIR, free_port
from mlm.ui.app import build_demo
from mlm.ui.common import CSS
from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS
from test_train_tab import START_FORM, local_app  # noqa: F401 - local_app is a fixture used here

# Counts every time Gradio's progress overlay ("processing | 1.2s") shows on a plot of the Curves tab.
WATCH_OVERLAYS = """() => {
  window.overlays = 0;
  const shown = (tracker) => !tracker.classList.contains('hide');
  for (const id of ['loss-plot', 'perplexity-plot']) {
    const tracker = document.querySelector(`#${id} [data-testid=status-tracker]`);
    new MutationObserver(() => { if (shown(tracker)) window.overlays += 1; })
      .observe(tracker, {attributes: true, attributeFilter: ['class']});
  }
}"""


@pytest.fixture
def served(local_app):
    """(app, URL): local_app served, with two long finished runs beside (the shipped ones' metrics, no weights)."""
    for shipped in ("scratch-wikitext2", "minilm-wikitext2-lora"):
        (local_app.checkpoints_dir / shipped).mkdir()
        shutil.copy(REPO / "checkpoints" / shipped / "metrics.jsonl", local_app.checkpoints_dir / shipped)
    demo = build_demo(local_app)
    demo.queue()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, css=CSS, quiet=True)
    yield local_app, f"http://127.0.0.1:{port}/"
    demo.close()  # then local_app ends the run


def small_corpus(tmp_path):
    """A few thousand WikiText lines as an uploaded text file: its validation tenth takes seconds on a CPU."""
    lines = (WIKITEXT_DIR / "wiki.train.tokens").read_text().splitlines()[:4000]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def train_records(run_dir) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("split") == "train"]


def plot(page, element_id: str, expression: str):
    return page.locator(f"#{element_id} .js-plotly-plot").evaluate(f"gd => {expression}")


def live_points(page, run: str) -> int:
    trace = f"gd.data.find(t => t.name === {json.dumps(run + ': train')})"
    return plot(page, "loss-plot", f"({trace} || {{x: []}}).x.length")


def test_a_training_run_is_followed_silently_and_in_focus(served, tmp_path):
    app, url = served
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Curves").click()
        page.locator("#loss-plot .js-plotly-plot").wait_for()
        page.evaluate(WATCH_OVERLAYS)
        page.get_by_role("tab", name="Compare").click()  # the curves update while their tab is hidden

        form = {**START_FORM, "source": "file", "upload": str(small_corpus(tmp_path)), "max_train_blocks": 8000}
        assert app.train.start_training(**form).startswith("Started")
        run_dir = app.jobs.run_dir
        deadline = time.monotonic() + 300
        while len(train_records(run_dir)) < 2:
            assert app.jobs.running() and time.monotonic() < deadline, app.train.training_status()
            time.sleep(1)
        time.sleep(2 * 2.0)  # a tick or two redraws the hidden plots

        page.get_by_role("tab", name="Curves").click()
        page.wait_for_timeout(1000)
        for element_id in ("loss-plot", "perplexity-plot"):  # drawn while hidden, they still fill their box
            box_width = page.locator(f"#{element_id}").bounding_box()["width"]
            assert plot(page, element_id, "gd._fullLayout.width") >= 0.9 * box_width

        run = run_dir.name
        start = live_points(page, run)
        assert start >= 1  # the new run was added to the plots without being picked
        deadline = time.monotonic() + 180
        while live_points(page, run) < start + 2:  # two more silent updates while we watch
            assert app.jobs.running() and time.monotonic() < deadline, app.train.training_status()
            time.sleep(0.5)
        assert page.evaluate("window.overlays") == 0

        total = train_records(run_dir)[-1]["total_steps"]
        for element_id in ("loss-plot", "perplexity-plot"):  # zoomed to the run, not to the 8,900-step ones
            assert plot(page, element_id, "gd._fullLayout.xaxis.range") == pytest.approx([0, total * 1.02])
        assert "markers" in plot(page, "loss-plot", f"gd.data.find(t => t.name === {json.dumps(run + ': train')}).mode")
        ticks = page.locator("#perplexity-plot g.ytick text").all_text_contents()
        assert ticks and all(re.fullmatch(r"\d{1,3}(,\d{3})*", tick) for tick in ticks), ticks
        page.screenshot(path=str(SCREENSHOTS / "curves-training.png"))
        browser.close()
