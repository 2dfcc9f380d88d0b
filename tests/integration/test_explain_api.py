"""The Explain endpoints of the real app over HTTP (gradio_client), as a script would call them."""

from __future__ import annotations

import pytest

from conftest import LORA_NAME, SCRATCH_NAME
from test_app_api import client  # noqa: F401 - the gradio_client fixture used below

TEXT = "The capital of France is [MASK]."


def test_each_endpoint_answers_one_model_as_json(client):
    candidates = client.predict(TEXT, "paris, london", SCRATCH_NAME, api_name="/score_candidates")
    assert candidates["model"] == SCRATCH_NAME
    assert [w["word"] for w in candidates["masks"][0]["words"]] == ["paris", "london"]

    layers = client.predict(TEXT, 3, LORA_NAME, api_name="/layer_guesses")["masks"][0]["layers"]
    assert [layer["layer"] for layer in layers] == list(range(7))  # embeddings + MiniLM's 6 layers
    compare = client.predict(TEXT, 3, SCRATCH_NAME, LORA_NAME, api_name="/fill_mask")["right"]["masks"][0]
    assert [c["token"] for c in layers[-1]["candidates"]] == [c["token"] for c in compare["candidates"]]
    assert [c["score"] for c in layers[-1]["candidates"]] == pytest.approx([c["score"] for c in compare["candidates"]],
                                                                          abs=1e-5)

    attention = client.predict(TEXT, SCRATCH_NAME, api_name="/attention")
    tokens = len(attention["tokens"])
    assert [len(attention["layers"]), len(attention["layers"][0])] == [3, 4]
    assert all(len(head) == tokens and all(sum(row) == pytest.approx(1, abs=1e-5) for row in head)
               for layer in attention["layers"] for head in layer)

    sentence = client.predict("The keys are on the table.", LORA_NAME, api_name="/score_sentence")
    assert [t["token"] for t in sentence["tokens"]] == ["the", "keys", "are", "on", "the", "table", "."]
    assert sentence["pseudo_log_likelihood"] == pytest.approx(sum(t["log_prob"] for t in sentence["tokens"]), abs=1e-4)

    training = client.predict("The keys are on the table.", 0.5, 3, api_name="/training_view")
    assert training["seed"] == 3 and training["mask_probability"] == 0.5
    assert training == client.predict("The keys are on the table.", 0.5, 3, api_name="/training_view")


def test_errors_are_one_line_per_side_never_a_traceback(client):
    broken = client.predict(TEXT, "paris", "broken-run", api_name="/score_candidates")
    assert set(broken) == {"model", "error"} and "cannot load the checkpoint" in broken["error"]
    assert "no [MASK]" in client.predict("No mask.", 5, LORA_NAME, api_name="/layer_guesses")["error"]
    assert "Unknown model" in client.predict(TEXT, "nope", api_name="/attention")["error"]
    assert "without [MASK]" in client.predict(TEXT, SCRATCH_NAME, api_name="/score_sentence")["error"]
    assert set(client.predict("", 0.15, 1, api_name="/training_view")) == {"error"}
