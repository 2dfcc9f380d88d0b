"""The real app on localhost, called as a program would: gradio_client on the fill_mask and list_models endpoints."""

from __future__ import annotations

import pytest
import torch
from gradio_client import Client
from transformers import pipeline

from conftest import LORA_NAME, SCRATCH_NAME
from mlm.serve.checks import MAX_MASKS


@pytest.fixture(scope="module")
def client(app_server) -> Client:
    return Client(app_server, verbose=False)


def test_list_models_names_the_shipped_models_and_discovered_runs(client):
    assert client.predict(api_name="/list_models") == [SCRATCH_NAME, LORA_NAME, "broken-run"]


def test_fill_mask_answers_for_both_models_and_matches_the_pipeline(client, app_project):
    text = "The capital of France is [MASK]."
    answers = client.predict(text, 5, SCRATCH_NAME, LORA_NAME, api_name="/fill_mask")
    assert answers["left"]["model"] == SCRATCH_NAME and answers["right"]["model"] == LORA_NAME
    for side in ("left", "right"):
        assert answers[side]["tokens"][0] == "[CLS]" and "[MASK]" in answers[side]["tokens"]
        assert len(answers[side]["masks"]) == 1 and len(answers[side]["masks"][0]["candidates"]) == 5
        assert answers[side]["filled"].startswith("The capital of France is ")
    folder = app_project / "checkpoints" / "scratch-wikitext2"  # fp16, run in fp32 by the app and here
    expected = pipeline("fill-mask", model=str(folder), top_k=5, dtype=torch.float32)(text)
    for candidate, reference in zip(answers["left"]["masks"][0]["candidates"], expected):
        assert candidate["score"] == pytest.approx(reference["score"], abs=1e-4)


def test_several_masks_in_any_spelling(client):
    answers = client.predict("The [mask] sat on the <mask>.", 3, SCRATCH_NAME, LORA_NAME, api_name="/fill_mask")
    assert [len(m["candidates"]) for m in answers["right"]["masks"]] == [3, 3]


@pytest.mark.parametrize("text, message", [
    ("", "Type a sentence"),
    ("There is no mask in this sentence.", "no [MASK]"),
    ("[MASK] " * (MAX_MASKS + 1), f"at most {MAX_MASKS}"),
    ("long " * 600 + "[MASK]", "too long"),
])
def test_bad_text_gets_a_friendly_message_in_both_columns(client, text, message):
    answers = client.predict(text, 5, SCRATCH_NAME, LORA_NAME, api_name="/fill_mask")
    assert message in answers["left"]["error"] and message in answers["right"]["error"]


def test_markup_is_returned_as_text(client):
    answers = client.predict("<script>alert('x')</script> <b>Paris</b> is the [MASK].", 2, SCRATCH_NAME, LORA_NAME,
                             api_name="/fill_mask")
    assert answers["left"]["filled"].startswith("<script>alert('x')</script> <b>Paris</b> is the ")


def test_an_unknown_or_broken_model_errors_only_its_column(client):
    answers = client.predict("A [MASK].", 5, "no-such-model", LORA_NAME, api_name="/fill_mask")
    assert "Unknown model" in answers["left"]["error"] and answers["right"]["masks"]
    answers = client.predict("A [MASK].", 5, SCRATCH_NAME, "broken-run", api_name="/fill_mask")
    assert answers["left"]["masks"] and "cannot load the checkpoint" in answers["right"]["error"]


def test_training_is_not_an_api_endpoint(client):
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
        "/fill_mask", "/list_models", "/score_candidates", "/layer_guesses", "/attention", "/score_sentence",
        "/training_view", "/list_snapshots", "/fill_mask_at", "/candidate_history"}
