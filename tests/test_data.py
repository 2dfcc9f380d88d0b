"""Corpus loading, run_mlm block grouping and masking statistics."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO, WIKITEXT_DIR
from mlm.data.corpus import (
    IGNORE_INDEX, MaskingSpec, corpus_stats, fixed_validation_masks, group_into_blocks, load_corpus, load_tokenizer,
    mask_tokens, max_predictions,
)
from mlm.errors import UserError

RAW_DIR = REPO.parent / "shared" / "data" / "wikitext-2-raw-v1"
BERT_TOKENIZER_DIR = REPO.parent / "shared" / "data" / "bert-base-uncased"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_raw_validation_split_gives_the_reports_1901_blocks():
    stats = corpus_stats(str(RAW_DIR))
    assert stats["validation"] == {"lines": 2461, "blocks": 1901}


def test_data_cli_prints_counts_as_json(capsys):
    from mlm.data.corpus import main

    assert main(["--data-dir", str(RAW_DIR), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["validation"]["blocks"] == 1901


def test_offline_tokenizer_matches_bert_base_uncased(tokenizer):
    reference = load_tokenizer(str(BERT_TOKENIZER_DIR))
    text = "The Valkyria Chronicles III ' s gameplay , unaffected by [MASK] tokenization ##s ."
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]
    assert len(tokenizer) == 30522


def test_grouping_matches_run_mlm(tokenizer, tmp_path):
    """Re-implements run_mlm's two batched maps by hand on a corpus spanning several 1,000-line batches."""
    lines = [f"line {i} " + "word " * (i % 37) for i in range(2500)]
    (tmp_path / "wiki.train.raw").write_text("\n".join(lines) + "\n")
    corpus = load_corpus(str(tmp_path))
    blocks = group_into_blocks(corpus["train"], tokenizer, block_size=16)

    expected = []
    for start in range(0, len(lines), 1000):
        ids = [t for line in lines[start : start + 1000] for t in tokenizer(line)["input_ids"]]
        expected += [ids[i : i + 16] for i in range(0, len(ids) // 16 * 16, 16)]
    assert blocks["input_ids"] == expected
    assert all(block[0] == tokenizer.cls_token_id for block in expected[:1])


def test_blank_lines_are_dropped_and_unk_becomes_bert_unk(tmp_path):
    (tmp_path / "wiki.train.tokens").write_text(" = Title = \n\n   \n a <unk> word \n")
    corpus = load_corpus(str(tmp_path))
    assert corpus["train"]["text"] == [" = Title = ", " a [UNK] word "]


def test_text_files_hold_out_the_last_tenth(tmp_path):
    corpus_file = tmp_path / "notes.txt"
    corpus_file.write_text("\n".join(f"sentence {i}" for i in range(20)) + "\n\n")
    corpus = load_corpus(text_files=[str(corpus_file)])
    assert len(corpus["train"]) == 18 and corpus["validation"]["text"] == ["sentence 18", "sentence 19"]


@pytest.mark.parametrize("make_folder, message", [
    (lambda path: path / "missing", "not found"),
    (lambda path: path, "no wiki."),
])
def test_missing_or_empty_folder_is_a_user_error(tmp_path, make_folder, message):
    with pytest.raises(UserError, match=message):
        load_corpus(str(make_folder(tmp_path)))


def test_corpus_without_text_is_a_user_error(tmp_path):
    (tmp_path / "wiki.train.raw").write_text("\n   \n\n")
    with pytest.raises(UserError, match="no text"):
        load_corpus(str(tmp_path))


def test_masking_statistics_follow_bert(tokenizer):
    spec = MaskingSpec.from_tokenizer(tokenizer, 0.15)
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (400, 128))
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    inputs, labels = mask_tokens(ids, spec)

    chosen = labels != IGNORE_INDEX
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # never a special token
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    rate = chosen.sum().item() / (400 * 126)
    assert abs(rate - 0.15) < 0.005
    as_mask = (inputs[chosen] == tokenizer.mask_token_id).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.015
    assert abs(kept - 0.1) < 0.015  # (a random replacement equal to the original is rare enough to ignore)
    assert abs(1 - as_mask - kept - 0.1) < 0.015


def test_special_token_lookup_equals_comparing_with_each_special_id(tokenizer):
    """The masking's one-kernel lookup leaves masks (the fixed validation masks too) as comparing ids did."""
    spec = MaskingSpec.from_tokenizer(tokenizer)
    ids = torch.arange(len(tokenizer)).view(1, -1)
    by_comparison = torch.zeros_like(ids, dtype=torch.bool)
    for special_id in tokenizer.all_special_ids:
        by_comparison |= ids == special_id
    assert torch.equal(spec.is_special(ids), by_comparison) and by_comparison.sum() == len(spec.special_ids) == 5


def test_masking_rate_is_configurable(tokenizer):
    ids = torch.randint(1000, 30000, (200, 128))
    _, labels = mask_tokens(ids, MaskingSpec.from_tokenizer(tokenizer, 0.4))
    assert abs((labels != IGNORE_INDEX).float().mean().item() - 0.4) < 0.01


def test_validation_masks_are_fixed_and_always_15_percent(tokenizer):
    blocks = torch.randint(1000, 30000, (64, 128))
    training_spec = MaskingSpec.from_tokenizer(tokenizer, 0.3)
    first, second = fixed_validation_masks(blocks, training_spec), fixed_validation_masks(blocks, training_spec)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert abs((first[1] != IGNORE_INDEX).float().mean().item() - 0.15) < 0.02


def test_prediction_cap_covers_the_binomial_tail():
    cap = max_predictions(1024, 0.15)
    assert 1024 * 0.15 + 5 * (1024 * 0.15 * 0.85) ** 0.5 < cap <= 1024


def test_wikitext_train_split_loads(tokenizer):
    corpus = load_corpus(str(WIKITEXT_DIR))
    assert len(corpus["train"]) == 23767 and len(corpus["validation"]) == 2461


def test_offline_bert_base_stands_in_as_the_packaged_minilm(monkeypatch):
    from mlm.hub import MINILM_PACKAGE, hub_reachable, offline_stand_in

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    assert offline_stand_in("bert-base-uncased") == MINILM_PACKAGE
    assert offline_stand_in(str(BERT_TOKENIZER_DIR)) == str(BERT_TOKENIZER_DIR)  # folders and other names stay
    assert offline_stand_in("roberta-base") == "roberta-base"
