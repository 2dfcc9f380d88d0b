"""Serving a public Space to a class: bounded input, bounded queue per visitor, a bounded model cache, no leaks of
server internals, and batched forward passes that give the same numbers as one sentence at a time."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import tracemalloc

import httpx
import pytest
import torch
from gradio_client import Client
from transformers import AutoTokenizer, PreTrainedTokenizerBase, pipeline

from conftest import LORA_NAME, SCRATCH_NAME
from mlm.model.files import load_model
from mlm.serve.answers import Predictor
from mlm.serve.checks import MAX_TEXT_CHARS
from mlm.serve.inference import MicroBatcher, TracedEncoders, chunks_by_tokens, masked_top_k
from mlm.serve.lru import LRU
from mlm.serve.registry import ModelRegistry
from mlm.ui.app import DemoApp, build_demo
from mlm.ui.body_limit import TOO_LARGE_MESSAGE
from mlm.ui.gradio_patches import (
    BUSY_MESSAGE, UnsupportedGradio, cheap_sessions, check_gradio_version, limit_per_session, patch_gradio,
)

# A class name (SafetensorError, AttributeError, ...) or a path of the server in a message meant for a visitor.
INTERNALS = re.compile(r"\b\w*(Error|Exception)\b|/tmp/|/work/|/home/|/root/")


# ----------------------------------------------------------------------------------------------------------------
# 1. Text of any length: refused before the tokenizer sees it


@pytest.fixture
def tokenizer_must_not_run(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer was called")

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", refuse)


def test_a_40_mb_text_is_refused_before_tokenizing_fast_and_in_flat_memory(registry, predictor,
                                                                         tokenizer_must_not_run):
    registry.load(SCRATCH_NAME), registry.load(LORA_NAME)  # loading is not what is measured
    text = "word " * 8_000_000 + "[MASK]"
    tracemalloc.start()
    began = time.perf_counter()
    answers = predictor.fill_mask(text, 5, SCRATCH_NAME, LORA_NAME)
    seconds = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    for side in ("left", "right"):
        assert answers[side]["error"] == f"The text is too long: {len(text):,} characters, at most {MAX_TEXT_CHARS:,}."
    assert seconds < 1.0 and peak < 1_000_000  # 40 MB of text, no copy of it


def test_the_ui_predict_event_refuses_an_oversized_text_before_tokenizing(app_project, tokenizer_must_not_run):
    outputs = DemoApp(app_project / "checkpoints").compare.compare("x" * (MAX_TEXT_CHARS + 1) + " [MASK]", 5,
                                                                   SCRATCH_NAME, LORA_NAME)
    left_filled, right_filled = outputs["left"]["filled"]["value"], outputs["right"]["filled"]["value"]
    assert left_filled.startswith("⚠️ The text is too long") and right_filled.startswith("⚠️ The text is too long")


def test_a_text_at_the_limit_still_reaches_the_model(predictor):
    text = ("a " * (MAX_TEXT_CHARS // 2))[: MAX_TEXT_CHARS - 7] + " [MASK]"
    assert len(text) == MAX_TEXT_CHARS
    assert "tokens, this model reads at most 512" in predictor.answer(SCRATCH_NAME, text, 5)["error"]  # its own limit


def test_the_server_refuses_an_oversized_text_and_a_40_mb_request_before_reading_it(app_server):
    client = Client(app_server, verbose=False)
    answers = client.predict("word " * 20_000 + "[MASK]", 5, SCRATCH_NAME, LORA_NAME, api_name="/fill_mask")
    assert answers["left"]["error"].startswith("The text is too long: 100,006 characters")
    began = time.perf_counter()
    status, detail = call(app_server, ["word " * 8_000_000 + "[MASK]", 5, SCRATCH_NAME, LORA_NAME])
    assert (status, detail) == (413, TOO_LARGE_MESSAGE) and time.perf_counter() - began < 10
    assert client.predict("A [MASK].", 1, SCRATCH_NAME, LORA_NAME, api_name="/fill_mask")["left"]["masks"]


# ----------------------------------------------------------------------------------------------------------------
# 2. One visitor cannot fill the queue


def call(url: str, data: list, session_hash: str | None = None) -> tuple[int, str]:
    """Queue one fill_mask call through the plain HTTP API without reading its result: (status, event id/detail)."""
    body = {"data": data, **({"session_hash": session_hash} if session_hash else {})}
    response = httpx.post(f"{url}gradio_api/call/fill_mask", json=body, timeout=60)
    return response.status_code, response.json()["event_id" if response.is_success else "detail"]


@pytest.mark.parametrize("session_hash", ["flooding-student", None])
def test_a_flooding_client_is_told_the_app_is_busy_and_others_are_still_served(app_server, session_hash):
    other_student = Client(app_server, verbose=False)
    other_student.predict("A [MASK].", 1, SCRATCH_NAME, LORA_NAME, api_name="/fill_mask")  # the models are loaded
    answers = [call(app_server, ["A [MASK].", 1, SCRATCH_NAME, LORA_NAME], session_hash) for _ in range(40)]
    refused = [detail for status, detail in answers if status == 503]
    assert 30 <= len(refused) <= 36 and set(refused) == {BUSY_MESSAGE}
    assert all(status in (200, 503) for status, _ in answers)
    began = time.perf_counter()
    other = other_student.predict("Another [MASK].", 1, SCRATCH_NAME, LORA_NAME, api_name="/fill_mask")
    assert other["left"]["masks"] and time.perf_counter() - began < 10


def test_a_full_queue_answers_busy_in_the_users_terms():
    """A real Gradio server with a queue of 2 behind one slow event: the next sessions are told the app is busy."""
    import gradio as gr

    from conftest import free_port

    release = threading.Event()

    def slow(text: str) -> str:
        release.wait(30)
        return text

    with gr.Blocks() as demo:
        gr.api(slow, api_name="slow")
    demo.queue(max_size=2, default_concurrency_limit=1)
    limit_per_session(demo, 8)
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        answers = []
        for number in range(6):
            answers.append(httpx.post(f"http://127.0.0.1:{port}/gradio_api/call/slow",
                                      json={"data": ["x"], "session_hash": f"student-{number}"}, timeout=30))
            time.sleep(0.2)  # the first one starts and holds the only worker
        assert [a.status_code for a in answers].count(200) == 3  # one running, two queued
        assert [a.json()["detail"] for a in answers if a.status_code == 503] == [BUSY_MESSAGE] * 3
    finally:
        release.set()
        demo.close()


# ----------------------------------------------------------------------------------------------------------------
# 6. A bounded model cache; the shipped models stay


def test_loaded_models_are_bounded_least_recently_used_out_and_shipped_ones_pinned(app_project, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(app_project / "checkpoints", checkpoints, ignore=shutil.ignore_patterns("broken-run"))
    (tmp_path / "checkpoints" / "models.json").write_text(json.dumps({"models": [
        {"name": SCRATCH_NAME, "path": "checkpoints/scratch-wikitext2"}]}))
    for run in ("run-a", "run-b", "run-c"):
        shutil.copytree(checkpoints / "scratch-wikitext2", checkpoints / run)
    registry = ModelRegistry(checkpoints, extra_models=2)
    predictor = Predictor(registry)
    for number, name in enumerate((SCRATCH_NAME, "run-a", "run-b", "run-a", "run-c")):
        assert predictor.answer(name, f"A [MASK] {number}.", 1)["masks"]  # new texts: no answer from the cache
    assert registry.loaded() == [SCRATCH_NAME, "run-a", "run-c"]  # run-b was the least recently used
    assert predictor.answer("run-b", "Another [MASK].", 1)["masks"]  # evicted models load again when asked
    assert registry.loaded() == [SCRATCH_NAME, "run-c", "run-b"]


def test_the_lru_cache_drops_the_least_recently_used_and_keeps_pinned_entries_beyond_its_bound():
    cache = LRU(2, pinned=lambda key: key.startswith("shipped"))
    for key in ("shipped-a", "x", "y"):
        cache.put(key, key.upper())
    assert cache.get("x") == "X"  # a use: y is now the least recently used
    cache.put("z", "Z")
    assert cache.keys() == ["shipped-a", "x", "z"] and cache.get("y") is None  # the pinned one did not count
    cache.put("x", "new")  # replacing is a use too, and keeps one entry per key
    assert cache.keys() == ["shipped-a", "z", "x"] and cache.get("x") == "new"
    assert LRU(0).get("anything") is None
    empty = LRU(0)
    empty.put("k", "v")
    assert len(empty) == 0  # a bound of 0 keeps nothing (but pinned entries)
    with pytest.raises(ValueError):
        LRU(-1)


def test_the_lru_cache_stays_bounded_under_concurrent_use():
    cache, errors = LRU(8), []

    def use(offset: int) -> None:
        try:
            for number in range(2000):
                cache.put((offset + number) % 50, number)
                cache.get((offset * 7 + number) % 50)
                assert len(cache) <= 8
        except Exception as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=use, args=(offset,)) for offset in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(cache) == 8 and len(set(cache.keys())) == 8


# ----------------------------------------------------------------------------------------------------------------
# 7. No server internals in answers; the details go to the server log


def test_errors_name_no_server_path_and_no_exception_class(app_server, app_project):
    client = Client(app_server, verbose=False)
    answers = client.predict("A [MASK].", 5, "broken-run", "../../etc/passwd", api_name="/fill_mask")
    assert answers["left"]["error"].startswith("cannot load the checkpoint of 'broken-run'")
    assert answers["right"]["error"].startswith("Unknown model '../../etc/passwd'")
    for side in ("left", "right"):
        assert not INTERNALS.search(answers[side]["error"]) and str(app_project) not in answers[side]["error"]
    time.sleep(0.5)
    log = (app_project / "app.log").read_text()
    assert "broken-run" in log and str(app_project / "checkpoints" / "broken-run") in log  # for the operator


# ----------------------------------------------------------------------------------------------------------------
# 15. Batching: one padded pass per model gives each sentence the numbers it gets alone


SENTENCES = ["The capital of France is [MASK].", "A [MASK].", "The [MASK] of the river is in the [MASK] mountains.",
             "During the war , the [MASK] was used as a hospital , and later it became a [MASK] for the town ."]


@pytest.mark.parametrize("name", [SCRATCH_NAME, LORA_NAME])
def test_a_padded_batch_gives_each_sentence_its_pipeline_scores(registry, name):
    model, tokenizer = registry.load(name)
    encoded = [tokenizer(text)["input_ids"] for text in SENTENCES]
    batched = masked_top_k(model, encoded, tokenizer.mask_token_id, tokenizer.pad_token_id, 5)
    folder = registry.entry(name).location
    reference = pipeline("fill-mask", model=load_model(folder), tokenizer=AutoTokenizer.from_pretrained(folder),
                         top_k=5)
    for text, ids, guesses in zip(SENTENCES, encoded, batched):
        alone = masked_top_k(model, [ids], tokenizer.mask_token_id, tokenizer.pad_token_id, 5)[0]
        assert guesses.positions == alone.positions
        assert torch.equal(guesses.token_ids, alone.token_ids)
        assert torch.allclose(guesses.scores, alone.scores, atol=1e-5)
        expected = reference(text)
        expected = [expected] if isinstance(expected[0], dict) else expected  # one mask: a flat list
        for row, per_mask in zip(guesses.scores, expected):
            assert row.tolist() == pytest.approx([e["score"] for e in per_mask], abs=1e-4)


@pytest.mark.parametrize("name", [SCRATCH_NAME, LORA_NAME])
def test_the_traced_encoder_gives_the_eager_numbers_padded_or_not(registry, name):
    model, tokenizer = registry.load(name)
    encoders = TracedEncoders()
    encoded = [tokenizer(text)["input_ids"] for text in SENTENCES]
    for batch in (encoded, encoded[:1], encoded[1:2]):  # padded, and single sentences (an all-ones attention mask)
        eager = masked_top_k(model, batch, tokenizer.mask_token_id, tokenizer.pad_token_id, 5)
        traced = masked_top_k(model, batch, tokenizer.mask_token_id, tokenizer.pad_token_id, 5, encoders(model))
        for mine, reference in zip(traced, eager, strict=True):
            assert mine.positions == reference.positions
            assert torch.equal(mine.token_ids, reference.token_ids)
            assert torch.allclose(mine.scores, reference.scores, atol=1e-6)
    assert encoders(model) and len(encoders._traced) == 1  # traced once per model


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(app_project):
    predictor = Predictor(ModelRegistry(app_project / "checkpoints"))
    alone = {text: predictor.answer(SCRATCH_NAME, text, 3) for text in SENTENCES}
    predictor = Predictor(ModelRegistry(app_project / "checkpoints"))  # a fresh answer cache
    predictor.registry.load(SCRATCH_NAME)
    batches = []
    run_batch = predictor._batcher._run_batch
    predictor._batcher._run_batch = lambda requests: batches.append(len(requests)) or run_batch(requests)
    results = {}
    threads = [threading.Thread(target=lambda t=text: results.__setitem__(t, predictor.answer(SCRATCH_NAME, t, 3)))
               for text in SENTENCES * 8]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(batches) <= len(threads) and len(batches) < len(threads)  # some requests shared a pass
    for text in SENTENCES:
        assert [m["index"] for m in results[text]["masks"]] == [m["index"] for m in alone[text]["masks"]]
        for mine, reference in zip(results[text]["masks"], alone[text]["masks"]):
            assert [c["token"] for c in mine["candidates"]] == [c["token"] for c in reference["candidates"]]
            assert [c["score"] for c in mine["candidates"]] == pytest.approx(
                [c["score"] for c in reference["candidates"]], abs=1e-5)


def test_repeated_questions_come_from_the_cache_as_independent_copies(app_project):
    predictor = Predictor(ModelRegistry(app_project / "checkpoints"))
    first = predictor.answer(SCRATCH_NAME, "Paris is the [MASK] of France.", 5)
    first["masks"][0]["candidates"].clear()  # a caller changing its answer changes nobody else's
    def run_batch(requests):
        raise AssertionError("a repeated question ran the model again")

    predictor._batcher._run_batch = run_batch
    again = predictor.answer(SCRATCH_NAME, "Paris is the [MASK] of France.", 5)
    assert len(again["masks"][0]["candidates"]) == 5


def test_the_batcher_groups_what_arrives_while_a_batch_runs_and_survives_a_failing_batch():
    started, release, sizes = threading.Event(), threading.Event(), []

    def run(payloads):
        sizes.append(len(payloads))
        started.set()
        release.wait(10)
        if "boom" in payloads:
            raise RuntimeError("boom")
        return [p * 2 if p != "bad" else ValueError("bad input") for p in payloads]

    batcher = MicroBatcher(run)
    first = batcher.submit(1)
    started.wait(10)
    queued = [batcher.submit(p) for p in (2, 3, "bad")]
    release.set()
    assert first.result(10) == 2 and [f.result(10) for f in queued[:2]] == [4, 6]
    with pytest.raises(ValueError):
        queued[2].result(10)
    assert sizes == [1, 3]
    with pytest.raises(RuntimeError):
        batcher.submit("boom").result(10)
    assert batcher.submit(5).result(10) == 10


def test_batches_of_long_sentences_are_split_to_bound_attention_memory():
    lengths = [500, 10, 12, 500, 11, 300]
    groups = chunks_by_tokens(lengths, max_tokens=1024)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert all(len(group) * max(lengths[i] for i in group) <= 1024 for group in groups)
    assert groups[0] == [1, 4, 2]  # the short ones together


def test_a_cheap_session_configures_components_on_demand_and_gives_gradios_configurations(app_project, monkeypatch):
    from gradio import state_holder

    demo = build_demo(DemoApp(app_project / "checkpoints"))
    monkeypatch.setattr(state_holder, "SessionState", state_holder.SessionState)  # undone after the test
    gradios = state_holder.SessionState(demo)
    cheap_sessions()
    session = state_holder.SessionState(demo)
    assert dict.__len__(session.config_values) == 0  # nothing configured up front
    some_key = next(iter(demo.blocks))
    session._update_value_in_config(some_key, "changed")  # one component, as Gradio asks for it
    assert dict.__len__(session.config_values) == 1
    gradios._update_value_in_config(some_key, "changed")
    assert list(session.components) == list(gradios.components) and len(list(session.components)) == len(demo.blocks)


def test_the_gradio_patches_refuse_a_gradio_they_were_not_written_for():
    check_gradio_version()  # the installed one, which requirements.txt allows
    for version in ("5.49.1", "7.0.0", "7.1.0rc1"):
        with pytest.raises(UnsupportedGradio, match=f"written for gradio.*and gradio {version} is installed"):
            check_gradio_version(version)


def test_patch_gradio_sizes_the_groups_and_limits_each_session(monkeypatch):
    import gradio as gr
    from gradio import state_holder

    monkeypatch.setattr(state_holder, "SessionState", state_holder.SessionState)  # undone after the test
    with gr.Blocks() as demo:
        box = gr.Textbox()
        for _ in range(3):
            box.submit(lambda text: text, box, box, concurrency_id="grouped")
        box.change(lambda text: text, box, box)
    demo.queue(default_concurrency_limit=1)
    push = demo._queue.push
    patch_gradio(demo, concurrency={"grouped": 5}, events_per_session=3)
    limits = {fn.concurrency_id: fn.concurrency_limit for fn in demo.fns.values()}
    assert [fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == "grouped"] == [5, 5, 5]
    assert len(limits) == 2 and demo._queue.push is not push  # the other event keeps its own limit
    assert state_holder.SessionState.configs_on_demand
