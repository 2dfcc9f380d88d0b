"""A teacher in headless Chromium on the Train tab: the form shows what applies, a run starts under its own name,
the status names the phase (a screenshot is taken while it validates), Stop ends it within seconds and says why,
and a second Stop leaves that outcome on screen. Also: an upload refused where training is off, limited where on."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import WIKITEXT_DIR, running_app
from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS


@pytest.fixture
def train_page(tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    with running_app(tmp_path / "checkpoints", tmp_path / "app.log") as (url, _):
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.get_by_role("tab", name="Train").click()
            yield page
            browser.close()


def test_a_teacher_starts_watches_and_stops_a_run(train_page):
    page = train_page
    status = page.locator("#train-status")
    upload, folder = page.locator("#train-upload"), page.locator("#train-folder")
    expect(upload).to_be_hidden()  # the upload box shows only for an upload
    page.get_by_label("A text file I upload").check()
    expect(upload).to_be_visible(timeout=30_000)  # a busy 2-core machine answers events slowly
    expect(folder).to_be_hidden()
    page.get_by_label("A local WikiText folder").check()
    expect(folder.locator("textarea, input")).to_have_value(str(WIKITEXT_DIR), timeout=30_000)
    expect(upload).to_be_hidden()
    expect(page.locator("#preset-about")).to_contain_text("The original recipe")
    expect(page.locator("#preset-about")).to_contain_text(re.compile(r"On this machine: about \d"), timeout=120_000)

    page.get_by_label("Run name").fill("class-demo")
    page.get_by_label("Cap: training blocks").fill("80")
    page.get_by_label("Cap: validation blocks").fill("400")
    page.get_by_role("button", name="Start training").click()
    expect(status).to_contain_text("class-demo", timeout=30_000)
    expect(status).to_contain_text("validating", timeout=240_000)
    expect(status.get_by_role("cell").nth(5)).to_have_text(re.compile(r"^(\d+ min )?\d+ s$"))  # since Start
    time.sleep(2.5)  # one more timer tick, so the picture shows the time since Start moving on
    page.screenshot(path=str(SCREENSHOTS / "train-validating.png"))

    began = time.monotonic()
    page.get_by_role("button", name="Stop", exact=True).click()
    # the trainer (at nice 10) ends within seconds on a quiet machine; a busy shared one is allowed 30 s here
    expect(status).to_contain_text("Stopped by the Stop button", timeout=30_000)
    assert time.monotonic() - began < 30
    expect(status).to_contain_text("press Resume")
    page.get_by_role("button", name="Stop", exact=True).click()  # again: the outcome stays
    expect(status).to_contain_text("No training run is going.")
    expect(status).to_contain_text("Stopped by the Stop button")
    expect(page.get_by_role("button", name="Start training")).to_be_enabled()


@pytest.mark.parametrize("env, small_accepted", [({"SPACE_ID": "org/demo"}, False),
                                                  ({"SPACE_ID": "org/demo", "MLM_ALLOW_TRAINING": "1",
                                                    "MLM_MAX_UPLOAD_MB": "0.05"}, True)])
def test_uploads_are_refused_where_training_is_off_and_limited_where_on(tmp_path, env, small_accepted):
    (tmp_path / "checkpoints").mkdir()
    kept = tmp_path / "gradio-files"
    with running_app(tmp_path / "checkpoints", tmp_path / "app.log", GRADIO_TEMP_DIR=str(kept), **env) as (url, _):
        big = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.txt", b"word " * 20_000)}, timeout=60)
        small = httpx.post(f"{url}gradio_api/upload", files={"files": ("small.txt", b"word " * 2_000)}, timeout=60)
        assert big.status_code == 413
        assert (small.status_code == 200) is small_accepted
        sizes = [path.stat().st_size for path in kept.rglob("*") if path.is_file()]
    assert 100_000 not in sizes  # the refused upload was not kept
    assert (10_000 in sizes) is small_accepted
