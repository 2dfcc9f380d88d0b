"""The Explain computations on the shipped checkpoints (loaded as the app loads them), each against an independent
one: the fill-mask pipeline, forward hooks on the layers, attention recomputed by hand, the masking recipe's rates."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer, pipeline

from conftest import LORA_NAME, REPO, SCRATCH_NAME
from mlm.model.files import load_model
from mlm.serve.answers import Predictor
from mlm.serve.explain import MAX_VIEW_TOKENS, Explainer
from mlm.serve.registry import ModelRegistry
from mlm.ui.app import DemoApp

MODELS = [SCRATCH_NAME, LORA_NAME]
SENTENCE = "The capital of France is [MASK]."


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry(REPO / "checkpoints")


@pytest.fixture(scope="module")
def explainer(registry) -> Explainer:
    return Explainer(registry)


@pytest.fixture(scope="module")
def predictor(registry) -> Predictor:
    return Predictor(registry)


@pytest.fixture(scope="module")
def pipelines(registry) -> dict:
    """transformers' fill-mask pipeline per model, in fp32 as the app computes (a LoRA one merged by load_model)."""
    made = {}
    for name in MODELS:
        folder = registry.entry(name).location
        made[name] = (pipeline("fill-mask", model=folder, dtype=torch.float32) if name == SCRATCH_NAME else
                      pipeline("fill-mask", model=load_model(folder), tokenizer=AutoTokenizer.from_pretrained(folder)))
    return made


@pytest.mark.parametrize("name", MODELS)
def test_each_token_log_prob_equals_the_pipeline_score_with_that_token_masked(explainer, pipelines, name):
    """The pipeline's own forward and scoring (`targets`) on the sentence with one position masked at a time. The
    mask goes in by token id: '[MASK]' typed into 'photos##yn##thesis' would re-split the word around it."""
    text = "The keys to the cabinet are on the table, said the photosynthesis expert."  # several pieces
    answer = explainer.score_sentence(text, name)
    fill_mask = pipelines[name]
    tokenizer = fill_mask.tokenizer
    inputs = tokenizer(text, return_tensors="pt")
    assert [t["token"] for t in answer["tokens"]] == tokenizer.convert_ids_to_tokens(inputs["input_ids"][0, 1:-1])
    assert any(t["token"].startswith("##") for t in answer["tokens"])
    for position, token in enumerate(answer["tokens"], start=1):
        masked = {key: value.clone() for key, value in inputs.items()}
        masked["input_ids"][0, position] = tokenizer.mask_token_id
        targets = fill_mask.get_target_ids(token["token"])
        [expected] = fill_mask.postprocess(fill_mask.forward(masked), target_ids=targets)
        assert token["log_prob"] == pytest.approx(math.log(expected["score"]), abs=1e-4)
    log_probs = [t["log_prob"] for t in answer["tokens"]]
    assert answer["pseudo_log_likelihood"] == pytest.approx(sum(log_probs), abs=1e-5)
    assert answer["pseudo_perplexity"] == pytest.approx(math.exp(-sum(log_probs) / len(log_probs)), rel=1e-5)
    # A whole word typed as [MASK] into the text: the pipeline's public call gives the same score.
    [expected] = fill_mask(text.replace("cabinet", "[MASK]"), targets=["cabinet"])
    [cabinet] = [t for t in answer["tokens"] if t["token"] == "cabinet"]
    assert cabinet["log_prob"] == pytest.approx(math.log(expected["score"]), abs=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_the_last_layer_equals_fill_mask_and_every_layer_equals_the_head_on_hooked_states(explainer, registry,
                                                                                          predictor, name):
    text = "The [MASK] of France is [MASK]."
    answer = explainer.layer_guesses(text, 5, name)
    compare = predictor.predict(name, text, 5)
    model, tokenizer = registry.load(name)
    assert [m["index"] for m in answer["masks"]] == [m["index"] for m in compare["masks"]]
    for mask, expected in zip(answer["masks"], compare["masks"]):
        assert len(mask["layers"]) == model.config.num_hidden_layers + 1
        last = mask["layers"][-1]["candidates"]
        assert [c["token"] for c in last] == [c["token"] for c in expected["candidates"]]
        for candidate, reference in zip(last, expected["candidates"]):
            assert candidate["score"] == pytest.approx(reference["score"], abs=1e-5)
    # Independent of output_hidden_states: capture the embeddings' and each layer's output with forward hooks.
    captured = []
    modules = [model.bert.embeddings, *model.bert.encoder.layer]
    hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
             for m in modules]
    try:
        with torch.inference_mode():
            model(**tokenizer(text, return_tensors="pt"))
    finally:
        for hook in hooks:
            hook.remove()
    for mask in answer["masks"]:
        for layer, state in zip(mask["layers"], captured):
            with torch.inference_mode():
                probabilities = model.cls(state[0, mask["index"]]).softmax(-1)
            scores, ids = probabilities.topk(5)
            assert [c["token"] for c in layer["candidates"]] == tokenizer.convert_ids_to_tokens(ids.tolist())
            assert [c["score"] for c in layer["candidates"]] == pytest.approx(scores.tolist(), abs=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_attention_rows_are_distributions_recomputed_by_hand_and_compare_keeps_sdpa(explainer, registry, predictor,
                                                                                     name):
    text = "The keys to the [MASK] are on the table."
    answer = explainer.attention(text, name)
    model, tokenizer = registry.load(name)
    config = model.config
    weights = torch.tensor(answer["layers"])
    tokens = len(answer["tokens"])
    assert weights.shape == (config.num_hidden_layers, config.num_attention_heads, tokens, tokens)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5)
    # softmax(Q K^T / sqrt(d)) from each layer's input and its own query/key projections
    encoded = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        states = model.bert(**encoded, output_hidden_states=True).hidden_states
        heads, size = config.num_attention_heads, config.hidden_size // config.num_attention_heads
        for number, layer in enumerate(model.bert.encoder.layer):
            attention = layer.attention.self
            query = attention.query(states[number][0]).view(tokens, heads, size).transpose(0, 1)
            key = attention.key(states[number][0]).view(tokens, heads, size).transpose(0, 1)
            expected = (query @ key.transpose(1, 2) / math.sqrt(size)).softmax(-1)
            assert torch.allclose(weights[number], expected, atol=1e-5)
    assert config._attn_implementation == "sdpa"  # the fast path is back for Compare
    assert predictor.predict(name, text, 1)["masks"]


@pytest.mark.parametrize("name", MODELS)
def test_the_top_guess_of_fill_mask_ranks_first_and_pieces_are_scored_as_the_pipeline_targets(explainer, predictor,
                                                                                                pipelines, name):
    top = predictor.predict(name, SENTENCE, 1)["masks"][0]["candidates"][0]
    answer = explainer.score_candidates(SENTENCE, f"{top['token']}, London, photosynthesis", name)
    first, london, split = answer["masks"][0]["words"]
    assert first["rank"] == 1 and first["score"] == pytest.approx(top["score"], abs=1e-6)
    assert split["pieces"][0] == split["piece"] and len(split["pieces"]) > 1
    for word in (london, split):
        [expected] = pipelines[name](SENTENCE, targets=[word["word"]])
        assert expected["token_str"] == word["piece"] and word["score"] == pytest.approx(expected["score"], abs=1e-6)
        if word["rank"] <= 100:  # the rank is the word's place in the pipeline's own ordering
            assert pipelines[name](SENTENCE, top_k=word["rank"])[-1]["token_str"] == word["piece"]


def test_training_view_picks_15_percent_then_80_10_10(explainer):
    text = "The quick brown fox jumps over the lazy dog near the river bank while the farmer watches."
    counts = {"tokens": 0, "masked": 0, "random": 0, "kept": 0}
    for seed in range(1500):
        answer = explainer.training_view(text, 0.15, seed)
        assert answer["seed"] == seed and answer["tokens"][0]["role"] is None and answer["tokens"][-1]["role"] is None
        for token in answer["tokens"][1:-1]:
            counts["tokens"] += 1
            if token["role"]:
                counts[token["role"]] += 1
                assert (token["shown"] == "[MASK]") == (token["role"] == "masked")
                assert (token["shown"] == token["token"]) == (token["role"] == "kept")
            else:
                assert token["shown"] == token["token"]
    picked = counts["masked"] + counts["random"] + counts["kept"]

    def within(successes, trials, p):  # five standard deviations of the binomial count
        return abs(successes - trials * p) <= 5 * math.sqrt(trials * p * (1 - p))

    assert within(picked, counts["tokens"], 0.15)
    assert within(counts["masked"], picked, 0.8) and within(counts["random"], picked, 0.1)
    assert within(counts["kept"], picked, 0.1)
    assert explainer.training_view(text, 0.15, 7) == explainer.training_view(text, 0.15, 7)


def test_the_slider_changes_the_picked_share(explainer):
    text = "one two three four five six seven eight nine ten"
    answers = [explainer.training_view(text, 0.5, seed) for seed in range(400)]
    picked = sum(t["role"] is not None for answer in answers for t in answer["tokens"])
    assert abs(picked - 2000) <= 5 * math.sqrt(4000 * 0.25)


def test_a_minimal_pair_shows_each_models_preference(explainer):
    app = DemoApp(REPO / "checkpoints")
    pair = ("The keys to the cabinet are on the table.", "The keys to the cabinet is on the table.")
    rows = app.explain.minimal_pair(*pair, SCRATCH_NAME, LORA_NAME)
    assert [row[0] for row in rows] == MODELS
    for row in rows:
        are, is_ = (explainer.score_sentence(sentence, row[0])["pseudo_log_likelihood"] for sentence in pair)
        assert row[1:3] == [round(are, 3), round(is_, 3)]
        assert row[3].startswith("A" if are > is_ else "B")


@pytest.mark.parametrize("call, message", [
    (lambda e: e.score_candidates("No mask.", "paris", SCRATCH_NAME), "no [MASK]"),
    (lambda e: e.score_candidates(SENTENCE, " , ,", SCRATCH_NAME), "one or more words"),
    (lambda e: e.score_candidates(SENTENCE, ",".join(map(str, range(30))), SCRATCH_NAME), "at most 20 words"),
    (lambda e: e.layer_guesses(SENTENCE, 0, SCRATCH_NAME), "Top-k"),
    (lambda e: e.layer_guesses("", 5, SCRATCH_NAME), "Type a sentence"),
    (lambda e: e.attention("word " * MAX_VIEW_TOKENS, SCRATCH_NAME), "too long"),
    (lambda e: e.attention(SENTENCE, "no-such-model"), "Unknown model"),
    (lambda e: e.score_sentence(SENTENCE, LORA_NAME), "without [MASK]"),
    (lambda e: e.score_sentence("   ", LORA_NAME), "Type a sentence"),
])
def test_bad_input_is_one_line_per_side(explainer, call, message):
    answer = call(explainer)
    assert set(answer) == {"model", "error"} and message in answer["error"] and "\n" not in answer["error"]


@pytest.mark.parametrize("args, message", [
    (("", 0.15, 1), "Type a sentence"), (("A b c.", 0.6, 1), "from 0.05 to 0.5"), (("A b c.", 0.15, -1), "seed"),
])
def test_training_view_bad_input(explainer, args, message):
    answer = explainer.training_view(*args)
    assert set(answer) == {"error"} and message in answer["error"]


def test_the_attention_view_colours_the_sentence_by_the_picked_layer_and_head():
    app = DemoApp(REPO / "checkpoints")
    picked = app.explain.explain_attention("The keys to the [MASK] are on the table.", SCRATCH_NAME, LORA_NAME)
    left, right = picked["left"]["answer"], picked["right"]["answer"]
    pickers = [picked[side][name]["value"] for side in ("left", "right") for name in ("layer", "head")]
    assert picked["source"]["value"] == 5 and pickers == [3, 0, 6, 0]  # the mask; last layers, averages
    shown = app.explain.show_attention(left, right, 5, 2, 0, 6, 4)
    weights = [torch.tensor(left["layers"])[1, :, 5].mean(0), torch.tensor(right["layers"])[5, 3, 5]]
    for spans, expected in zip((shown["left"]["spans"], shown["right"]["spans"]), weights):
        assert [weight for _, weight in spans[::2]] == pytest.approx(expected.tolist(), abs=1e-3)
    assert "layer 2, the average of its heads" in shown["left"]["note"] and "layer 6, head 4" in shown["right"]["note"]
