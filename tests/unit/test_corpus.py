"""Corpus sources -> lines: local files read directly give exactly the lines of `datasets`' text loader."""

from __future__ import annotations

import glob
import gzip
from pathlib import Path

import pytest

from conftest import REPO, WIKITEXT_DIR
from mlm.data.corpus import WikiTextFolder, load_corpus, open_corpus
from mlm.errors import UserError, one_line_error

RAW_DIR = REPO.parent / "shared" / "data" / "wikitext-2-raw-v1"
# Every line break Python knows besides "\n": datasets splits on "\n" only, after reading "\r\n" and "\r" as "\n".
AWKWARD_LINES = [" = Title = ", "", "   ", "\t", " a <unk> word ", "form\x0cfeed", "line\u2028separator",
                 "next\x85line", "group\x1dseparator", "crlf follows", "é ü 中文 😀", " <unk> ", "café\u00a0nbsp",
                 "last"]


def datasets_lines(files: list[Path], cache_dir: Path, unk_as_bert: bool = False) -> list[str]:
    """The reference: the non-blank rows of `datasets`' text loader, as the package read local files before issue 20
    (the tokenized WikiText's `<unk>` mapped first, then the blank rows filtered)."""
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    data_files = {"train": [glob.escape(str(file)) for file in files]}
    rows = load_dataset("text", data_files=data_files, cache_dir=str(cache_dir))["train"]["text"]
    if unk_as_bert:
        rows = [row.replace("<unk>", "[UNK]") for row in rows]
    return [row for row in rows if row.strip()]


def awkward_text(lines: list[str]) -> str:
    """The lines joined with every kind of line end datasets reads as one, without a final newline."""
    ends = ["\n", "\r\n", "\r"]
    return "".join(line + ends[i % 3] for i, line in enumerate(lines[:-1])) + lines[-1]


def test_wikitext_lines_equal_the_datasets_loader_on_an_awkward_corpus(tmp_path):
    (tmp_path / "wiki.train.tokens").write_text(awkward_text(AWKWARD_LINES * 3), encoding="utf-8", newline="")
    (tmp_path / "wiki.valid.raw").write_text(awkward_text(AWKWARD_LINES), encoding="utf-8", newline="")
    corpus = WikiTextFolder(tmp_path)
    train = corpus.lines("train")
    assert train == datasets_lines([tmp_path / "wiki.train.tokens"], tmp_path / "hf", unk_as_bert=True)
    assert corpus.lines("validation") == datasets_lines([tmp_path / "wiki.valid.raw"], tmp_path / "hf")
    assert "form\x0cfeed" in train and " a [UNK] word " in train and not any("<unk>" in line for line in train)
    assert "<unk>" in " ".join(corpus.lines("validation"))  # the raw files have no <unk> to map


@pytest.mark.parametrize("folder, splits", [(WIKITEXT_DIR, ("train", "validation")), (RAW_DIR, ("validation",))])
def test_real_wikitext_lines_equal_the_datasets_loader(tmp_path, folder, splits):
    corpus = WikiTextFolder(folder)
    assert corpus.splits == splits
    for split in splits:
        file = corpus.files[split]
        assert corpus.lines(split) == datasets_lines([file], tmp_path / "hf", unk_as_bert=file.suffix == ".tokens")


def test_text_file_lines_equal_the_datasets_loader(tmp_path):
    """Several files in order, awkward line ends, brackets in a name; `<unk>` is text in a teacher's own files,
    whatever their suffix."""
    files = [tmp_path / "notes[1] (final).txt", tmp_path / "more notes.tokens", tmp_path / "short.txt"]
    files[0].write_text(awkward_text(AWKWARD_LINES * 2), encoding="utf-8", newline="")
    files[1].write_text("\n".join(f"sentence {i} with <unk>" for i in range(30)) + "\n\n", encoding="utf-8")
    files[2].write_text("one more line", encoding="utf-8")
    corpus = load_corpus(text_files=[str(file) for file in files])
    lines = datasets_lines(files, tmp_path / "hf")
    held_out = max(1, -(-len(lines) // 10))
    assert corpus == {"train": lines[:-held_out], "validation": lines[-held_out:]}
    assert "sentence 3 with <unk>" in corpus["train"] and corpus["validation"][-1] == "one more line"


def test_wikitext2_loads(tmp_path):
    corpus = load_corpus(str(WIKITEXT_DIR))
    assert len(corpus["train"]) == 23767 and len(corpus["validation"]) == 2461


def test_blank_lines_are_dropped_and_unk_becomes_bert_unk(tmp_path):
    (tmp_path / "wiki.train.tokens").write_text(" = Title = \n\n   \n a <unk> word \n")
    assert load_corpus(str(tmp_path))["train"] == [" = Title = ", " a [UNK] word "]


def test_text_files_hold_out_the_last_tenth(tmp_path):
    corpus_file = tmp_path / "notes.txt"
    corpus_file.write_text("\n".join(f"sentence {i}" for i in range(20)) + "\n\n")
    corpus = load_corpus(text_files=[str(corpus_file)])
    assert len(corpus["train"]) == 18 and corpus["validation"] == ["sentence 18", "sentence 19"]


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


@pytest.mark.parametrize("content, message", [
    (None, "text file not found"),
    (b"only one line\n\n  \n", "fewer than two non-blank lines"),
])
def test_bad_text_files_are_user_errors(tmp_path, content, message):
    path = tmp_path / "notes.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_corpus(text_files=[str(path)])


def test_a_text_file_that_is_not_utf8_raises_what_the_command_answers_in_one_line(tmp_path):
    path = tmp_path / "notes.txt.gz"
    path.write_bytes(gzip.compress("caf\u00e9 au lait\nsecond line\n".encode("latin-1")))
    with pytest.raises(UnicodeDecodeError) as raised:
        load_corpus(text_files=[str(path)])
    assert one_line_error(raised.value).startswith("a text file is not UTF-8 text")


def test_text_files_come_before_a_data_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("first\nsecond\n")
    corpus = open_corpus(str(WIKITEXT_DIR), [str(tmp_path / "notes.txt")])
    assert corpus.lines("train") == ["first"] and corpus.lines("validation") == ["second"]


def test_offline_hub_names_data_dir(monkeypatch):
    from mlm.hub import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    with pytest.raises(UserError, match="pass --data-dir"):
        open_corpus()
