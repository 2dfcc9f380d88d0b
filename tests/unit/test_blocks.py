"""The one grouping (numpy) gives run_mlm's blocks exactly, for every source; the block cache serves them again."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import WIKITEXT_DIR
from mlm.data.__main__ import corpus_stats, main
from mlm.data.blocks import corpus_blocks, load_mlm_data
from mlm.data.corpus import WikiTextFolder, open_corpus
from mlm.data.tokenizer import load_plain_tokenizer
from mlm.errors import UserError
from test_corpus import RAW_DIR, datasets_lines
from test_tokenizer import tokenizer  # noqa: F401 - the same fixture


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLM_CACHE", str(tmp_path / "cache"))


def run_mlm_blocks(lines: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """The reference: run_mlm's grouping as `datasets.map` does it (the package's own until issue 20): tokenize in
    batches of 1,000 rows, then concatenate each batch and cut it into full blocks."""
    from datasets import Dataset

    def tokenize(batch):
        return {"input_ids": tokenizer(batch["text"])["input_ids"]}

    def group(batch):
        ids = [token for line in batch["input_ids"] for token in line]
        usable = len(ids) // block_size * block_size
        return {"input_ids": [ids[i : i + block_size] for i in range(0, usable, block_size)]}

    rows = Dataset.from_dict({"text": lines})
    tokenized = rows.map(tokenize, batched=True, batch_size=1000, remove_columns=["text"])
    blocks = tokenized.map(group, batched=True, batch_size=1000)["input_ids"]
    return torch.tensor(blocks, dtype=torch.long) if len(blocks) else torch.empty(0, block_size, dtype=torch.long)


class CannotEncode:
    """A tokenizer's vocabulary (all the cache key reads) without its encoder: a cache hit never tokenizes."""

    def __init__(self, tokenizer):
        self.backend_tokenizer = tokenizer.backend_tokenizer

    def __call__(self, *_args, **_kwargs):
        raise AssertionError("tokenized again despite the cache")


def test_raw_validation_split_gives_the_reports_1901_blocks():
    assert corpus_stats(str(RAW_DIR))["validation"] == {"lines": 2461, "blocks": 1901}


def test_data_cli_prints_counts_as_json(capsys):
    assert main(["--data-dir", str(RAW_DIR), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["validation"]["blocks"] == 1901


def test_data_cli_counts_a_blank_split(tmp_path):
    (tmp_path / "wiki.train.raw").write_text("some words here\n" * 100)
    (tmp_path / "wiki.valid.raw").write_text("\n  \n")
    stats = corpus_stats(str(tmp_path), block_size=8)
    assert stats == {"train": {"lines": 100, "blocks": 62}, "validation": {"lines": 0, "blocks": 0}}


def test_grouping_matches_run_mlm_by_hand(tmp_path, tokenizer):
    """run_mlm's two batched maps re-implemented as a plain loop, on a corpus spanning several 1,000-line batches."""
    lines = [f"line {i} " + "word " * (i % 37) for i in range(2500)]
    (tmp_path / "wiki.train.raw").write_text("\n".join(lines) + "\n")
    blocks, _ = corpus_blocks(open_corpus(str(tmp_path)), ("train",), tokenizer, 16)
    expected = []
    for start in range(0, len(lines), 1000):
        ids = [t for line in lines[start : start + 1000] for t in tokenizer(line)["input_ids"]]
        expected += [ids[i : i + 16] for i in range(0, len(ids) // 16 * 16, 16)]
    assert blocks["train"].tolist() == expected
    assert expected[0][0] == tokenizer.cls_token_id


@pytest.mark.parametrize("folder", [WIKITEXT_DIR, RAW_DIR], ids=["wikitext-2-v1", "wikitext-2-raw-v1"])
def test_real_wikitext_validation_blocks_equal_run_mlm(tmp_path, tokenizer, folder):
    corpus = WikiTextFolder(folder)
    blocks, line_counts = corpus_blocks(corpus, ("validation",), tokenizer, 128)
    file = corpus.files["validation"]
    lines = datasets_lines([file], tmp_path / "hf", unk_as_bert=file.suffix == ".tokens")
    assert torch.equal(blocks["validation"], run_mlm_blocks(lines, tokenizer, 128))
    assert line_counts == {"validation": 2461} and blocks["validation"].dtype == torch.int64


def test_plain_text_blocks_equal_run_mlm(tmp_path, tokenizer):
    """A teacher's corpus: the raw validation text and a short file after it, several 1,000-line batches."""
    files = [tmp_path / "lecture notes [week 1].txt", tmp_path / "extra.txt"]
    files[0].write_bytes((RAW_DIR / "wiki.valid.raw").read_bytes())
    files[1].write_text("\n".join(f"the sentence number {i} of the extra file ." for i in range(300)))
    data = load_mlm_data(text_files=[str(file) for file in files], tokenizer=tokenizer, block_size=64)
    lines = datasets_lines(files, tmp_path / "hf")
    cut = len(lines) - -(-len(lines) // 10)
    assert torch.equal(data.train_blocks, run_mlm_blocks(lines[:cut], tokenizer, 64))
    assert torch.equal(data.valid_blocks, run_mlm_blocks(lines[cut:], tokenizer, 64))
    assert data.line_counts == {"train": cut, "validation": len(lines) - cut}


@pytest.mark.parametrize("plain", [False, True], ids=["transformers", "tokenizers-only"])
def test_blocks_equal_run_mlm_on_an_awkward_corpus(tmp_path, tokenizer, plain):
    """Several 1,000-line batches, blank and whitespace-only lines, <unk>, CRLF line ends, a missing final newline;
    tokenized by transformers, or by `tokenizers` alone as a from-scratch run does (same blocks either way)."""
    lines = [f" line {i} <unk> " + "word " * (i % 41) if i % 7 else ("   " if i % 2 else "") for i in range(2600)]
    data = tmp_path / "data"
    data.mkdir()
    (data / "wiki.train.tokens").write_text("\r\n".join(lines), newline="")
    (data / "wiki.valid.tokens").write_text("\n".join(lines[:900]) + "\n")
    used = load_plain_tokenizer() if plain else tokenizer
    blocks, line_counts = corpus_blocks(open_corpus(str(data)), ("train", "validation"), used, 16)
    for split, file in (("train", "wiki.train.tokens"), ("validation", "wiki.valid.tokens")):
        expected = run_mlm_blocks(datasets_lines([data / file], tmp_path / "hf", unk_as_bert=True), tokenizer, 16)
        assert blocks[split].dtype == torch.int64 and torch.equal(blocks[split], expected), split
    assert line_counts == {"train": sum(1 for line in lines if line.strip()),
                           "validation": sum(1 for line in lines[:900] if line.strip())}
    assert (blocks["train"] == tokenizer.unk_token_id).any()


def test_wikitext2_blocks_equal_run_mlm_and_a_second_load_reads_the_cache(tmp_path, tokenizer):
    first = load_mlm_data(str(WIKITEXT_DIR), tokenizer=tokenizer)
    for blocks, split in ((first.train_blocks, "train"), (first.valid_blocks, "valid")):
        lines = datasets_lines([WIKITEXT_DIR / f"wiki.{split}.tokens"], tmp_path / "hf", unk_as_bert=True)
        assert torch.equal(blocks, run_mlm_blocks(lines, tokenizer, 128)), split
    assert first.line_counts == {"train": 23767, "validation": 2461}
    assert [path.suffix for path in (tmp_path / "cache").iterdir()] == [".pt"]  # one file, no temporary left

    again = load_mlm_data(str(WIKITEXT_DIR), tokenizer=CannotEncode(tokenizer))
    assert torch.equal(again.train_blocks, first.train_blocks) and again.line_counts == first.line_counts


def test_text_files_are_cached_and_a_changed_file_is_not_served(tmp_path, tokenizer):
    notes = tmp_path / "notes.txt"
    notes.write_text("alpha beta gamma\n" * 80)
    first = load_mlm_data(text_files=[str(notes)], tokenizer=tokenizer, block_size=8)
    again = load_mlm_data(text_files=[str(notes)], tokenizer=CannotEncode(tokenizer), block_size=8)
    assert torch.equal(again.train_blocks, first.train_blocks)
    notes.write_text("delta epsilon zeta\n" * 80)
    changed = load_mlm_data(text_files=[str(notes)], tokenizer=tokenizer, block_size=8)
    assert not torch.equal(changed.train_blocks, first.train_blocks)


def test_a_damaged_cache_file_is_rebuilt(tmp_path, tokenizer):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("wiki.train.raw", "wiki.valid.raw"):
        (data / name).write_text("some words here and there\n" * 50)
    first = load_mlm_data(str(data), tokenizer=tokenizer, block_size=8)
    (cached,) = (tmp_path / "cache").glob("*.pt")
    cached.write_bytes(b"garbage")
    again = load_mlm_data(str(data), tokenizer=tokenizer, block_size=8)
    assert torch.equal(again.train_blocks, first.train_blocks)


def test_changed_text_is_not_served_from_the_cache(tmp_path, tokenizer):
    data = tmp_path / "data"
    data.mkdir()
    (data / "wiki.valid.raw").write_text("valid words\n" * 40)
    (data / "wiki.train.raw").write_text("alpha beta\n" * 40)
    first = load_mlm_data(str(data), tokenizer=tokenizer, block_size=8)
    (data / "wiki.train.raw").write_text("gamma delta\n" * 40)
    second = load_mlm_data(str(data), tokenizer=tokenizer, block_size=8)
    assert not torch.equal(first.train_blocks, second.train_blocks)


@pytest.mark.parametrize("valid, message", [
    ("\n  \n", "no validation text"),
    (None, "no validation text"),
    ("two words\n", "validation text is shorter than one 8-token block"),
])
def test_a_split_without_enough_text_is_a_user_error(tmp_path, tokenizer, valid, message):
    data = tmp_path / "data"
    data.mkdir()
    (data / "wiki.train.raw").write_text("words\n" * 10)
    if valid is not None:
        (data / "wiki.valid.raw").write_text(valid)
    with pytest.raises(UserError, match=message):
        load_mlm_data(str(data), tokenizer=tokenizer, block_size=8)
