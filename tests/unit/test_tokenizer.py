"""The tokenizer: bert-base-uncased's vocabulary, offline from the packaged MiniLM."""

from __future__ import annotations

import pytest

from conftest import REPO
from mlm.data.tokenizer import load_tokenizer

BERT_TOKENIZER_DIR = REPO.parent / "shared" / "data" / "bert-base-uncased"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_offline_tokenizer_matches_bert_base_uncased(tokenizer):
    reference = load_tokenizer(str(BERT_TOKENIZER_DIR))
    text = "The Valkyria Chronicles III ' s gameplay , unaffected by [MASK] tokenization ##s ."
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]
    assert len(tokenizer) == 30522


def test_offline_bert_base_stands_in_as_the_packaged_minilm(monkeypatch):
    from mlm.hub import MINILM_PACKAGE, hub_reachable, offline_stand_in

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    assert offline_stand_in("bert-base-uncased") == MINILM_PACKAGE
    assert offline_stand_in(str(BERT_TOKENIZER_DIR)) == str(BERT_TOKENIZER_DIR)  # folders and other names stay
    assert offline_stand_in("roberta-base") == "roberta-base"
