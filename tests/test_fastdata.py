"""The fast WikiText path (no `datasets`, tensor cache) gives exactly the blocks of the `datasets` path."""

from __future__ import annotations

import pytest
import torch

from conftest import WIKITEXT_DIR
from mlm.data import blocks as fastdata
from mlm.data.corpus import (
    blocks_tensor, group_into_blocks, load_corpus, load_mlm_data, load_plain_tokenizer, load_tokenizer,
)
from mlm.errors import UserError


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLM_CACHE", str(tmp_path / "cache"))


def datasets_blocks(folder, tokenizer, block_size):
    corpus = load_corpus(str(folder))
    return {split: blocks_tensor(group_into_blocks(corpus[split], tokenizer, block_size)) for split in ("train", "validation")}


@pytest.mark.parametrize("plain", [False, True], ids=["transformers", "tokenizers-only"])
def test_blocks_equal_the_datasets_path_on_an_awkward_corpus(tmp_path, tokenizer, plain):
    """Several 1,000-line batches, blank and whitespace-only lines, <unk>, CRLF line ends, a missing final newline;
    tokenized by transformers, or by `tokenizers` alone as a from-scratch run does (same blocks either way)."""
    lines = [f" line {i} <unk> " + "word " * (i % 41) if i % 7 else ("   " if i % 2 else "") for i in range(2600)]
    data = tmp_path / "data"
    data.mkdir()
    (data / "wiki.train.tokens").write_text("\r\n".join(lines), newline="")
    (data / "wiki.valid.tokens").write_text("\n".join(lines[:900]) + "\n")
    blocks, line_counts = fastdata.wikitext_blocks(str(data), load_plain_tokenizer() if plain else tokenizer, 16)
    expected = datasets_blocks(data, tokenizer, 16)
    for split in ("train", "validation"):
        assert blocks[split].dtype == torch.int64 and torch.equal(blocks[split], expected[split]), split
    assert line_counts == {"train": sum(1 for line in lines if line.strip()),
                           "validation": sum(1 for line in lines[:900] if line.strip())}
    assert (blocks["train"] == tokenizer.unk_token_id).any()


def test_wikitext2_blocks_equal_and_a_second_load_reads_the_cache(tmp_path, tokenizer, monkeypatch):
    first = load_mlm_data(str(WIKITEXT_DIR))
    expected = datasets_blocks(WIKITEXT_DIR, tokenizer, 128)
    assert torch.equal(first.train_blocks, expected["train"]) and torch.equal(first.valid_blocks, expected["validation"])
    assert first.line_counts == {"train": 23767, "validation": 2461}
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def no_tokenizing(*_args):
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(fastdata, "group_lines", no_tokenizing)
    again = load_mlm_data(str(WIKITEXT_DIR))
    assert torch.equal(again.train_blocks, first.train_blocks) and again.line_counts == first.line_counts


def test_a_damaged_cache_file_is_rebuilt(tmp_path, tokenizer):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("wiki.train.raw", "wiki.valid.raw"):
        (data / name).write_text("some words here and there\n" * 50)
    first, _ = fastdata.wikitext_blocks(str(data), tokenizer, 8)
    (cached,) = (tmp_path / "cache").glob("*.pt")
    cached.write_bytes(b"garbage")
    again, _ = fastdata.wikitext_blocks(str(data), tokenizer, 8)
    assert torch.equal(again["train"], first["train"])


def test_changed_text_is_not_served_from_the_cache(tmp_path, tokenizer):
    data = tmp_path / "data"
    data.mkdir()
    (data / "wiki.valid.raw").write_text("valid words\n" * 40)
    (data / "wiki.train.raw").write_text("alpha beta\n" * 40)
    first, _ = fastdata.wikitext_blocks(str(data), tokenizer, 8)
    (data / "wiki.train.raw").write_text("gamma delta\n" * 40)
    second, _ = fastdata.wikitext_blocks(str(data), tokenizer, 8)
    assert not torch.equal(first["train"], second["train"])


def test_a_split_without_text_is_a_user_error(tmp_path, tokenizer):
    data = tmp_path / "data"
    data.mkdir()
    (data / "wiki.train.raw").write_text("words\n" * 10)
    (data / "wiki.valid.raw").write_text("\n  \n")
    with pytest.raises(UserError, match="no validation text"):
        fastdata.wikitext_blocks(str(data), tokenizer, 8)
