"""A corpus source -> its non-blank lines, split by split.

Three sources, chosen by `open_corpus`:
  * a local folder of WikiText files, `wiki.{train,valid,test}.raw` or the tokenized `wiki.*.tokens` (whose `<unk>`
    becomes the tokenizer's `[UNK]`);
  * plain text files (a teacher's own corpus), the last 10% of their lines held out for validation;
  * the hub's `wikitext` / `wikitext-2-raw-v1` (the default, when the hub is reachable), the one source read
    through `datasets`.

Local files are read directly, exactly as `datasets`' text loader reads them (`read_lines`; tests/unit/test_corpus.py
compares both on WikiText and on plain text): a run on local files never imports `datasets`, with its pyarrow and
pandas. Their paths are opened as given, never as glob patterns, so any name a user can type works: brackets,
spaces, unicode.

Each source also names its lines for the block cache (mlm/data/blocks.py) through `key_parts`: a local source by
its files' names and bytes, which are cheaper to hash than to read as lines, so a cached run never splits its text;
the hub by the lines themselves.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from pathlib import Path

from mlm.errors import UserError
from mlm.hub import hub_reachable

WIKITEXT = ("wikitext", "wikitext-2-raw-v1")
WIKITEXT_STEMS = {"train": "wiki.train", "validation": "wiki.valid", "test": "wiki.test"}
HELD_OUT_FRACTION = 0.1  # of a plain-text corpus, which has no validation file


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 file as `datasets`' text loader gives them: universal newlines ("\\r\\n" and
    "\\r" read as "\\n"), split on "\\n" only (not on the other breaks `str.splitlines` knows, such as \\x0c or
    \\u2028), each line's leading and trailing spaces kept. Other bytes than UTF-8 raise UnicodeDecodeError, which
    the training command answers in one line (mlm/errors.py); so does a compressed file, which `datasets` unpacked."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return [line for line in text.split("\n") if line.strip()]


def read_wikitext(path: Path) -> list[str]:
    """A WikiText file's lines; the tokenized WikiText marks rare words as `<unk>`, which BERT's vocabulary calls
    `[UNK]` (a line holding `<unk>` is never blank, so replacing after the blank lines are gone changes nothing)."""
    lines = read_lines(path)
    return [line.replace("<unk>", "[UNK]") for line in lines] if path.suffix == ".tokens" else lines


class WikiTextFolder:
    """Per split, the folder's raw WikiText file if present, else the tokenized one."""

    def __init__(self, folder: Path):
        self.name = str(folder)
        self.files: dict[str, Path] = {}
        for split, stem in WIKITEXT_STEMS.items():
            for suffix in (".raw", ".tokens"):
                if (folder / f"{stem}{suffix}").is_file():
                    self.files[split] = folder / f"{stem}{suffix}"
                    break
        self.splits = tuple(self.files)

    def key_parts(self, splits: tuple[str, ...]) -> Iterator[bytes]:
        # the file's name says how it is read (.tokens maps <unk>); the key of before issue 20: caches stay valid
        for split in sorted(splits):
            yield from (split.encode(), self.files[split].name.encode(), self.files[split].read_bytes())

    def lines(self, split: str) -> list[str]:
        return read_wikitext(self.files[split])


class TextFiles:
    """Plain text files read one after the other as one corpus; its last tenth of lines is the validation split."""

    splits = ("train", "validation")

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.name = ", ".join(str(path) for path in paths)

    def key_parts(self, splits: tuple[str, ...]) -> Iterator[bytes]:
        yield f"text files, {HELD_OUT_FRACTION} held out, splits {splits}".encode()
        for path in self.paths:  # each file's length first: the same bytes cut elsewhere are another corpus
            data = path.read_bytes()
            yield from (f"{len(data)}:".encode(), data)

    def lines(self, split: str) -> list[str]:
        return self._split[split]

    @functools.cached_property
    def _split(self) -> dict[str, list[str]]:
        lines = [line for path in self.paths for line in read_lines(path)]
        if len(lines) < 2:
            raise UserError("the text corpus has fewer than two non-blank lines")
        cut = len(lines) - max(1, math.ceil(len(lines) * HELD_OUT_FRACTION))
        return {"train": lines[:cut], "validation": lines[cut:]}


class HubWikiText:
    """WikiText-2 (raw) from the Hugging Face hub, through `datasets`, which downloads and caches it."""

    name = f"{'/'.join(WIKITEXT)} (hub)"

    def __init__(self):
        if not hub_reachable():
            raise UserError("the hub is not reachable (offline): pass --data-dir with a local WikiText-2 folder")
        from datasets import load_dataset
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()  # a cached load takes well under a second; its bars would only bury messages
        try:
            self.dataset = load_dataset(*WIKITEXT)
        except Exception as error:  # noqa: BLE001 - any hub failure becomes the same one-line hint
            raise UserError(f"loading {'/'.join(WIKITEXT)} from the hub failed ({error}); pass --data-dir") from error
        self.splits = tuple(self.dataset)

    def key_parts(self, splits: tuple[str, ...]) -> Iterator[bytes]:
        yield json.dumps([self.name, {split: self.lines(split) for split in splits}]).encode()

    def lines(self, split: str) -> list[str]:
        return self._lines[split]

    @functools.cached_property
    def _lines(self) -> dict[str, list[str]]:
        return {split: [line for line in self.dataset[split]["text"] if line.strip()] for split in self.splits}


Corpus = WikiTextFolder | TextFiles | HubWikiText


def open_corpus(data_dir: str | None = None, text_files: list[str] | None = None) -> Corpus:
    """Plain text files if given, else a WikiText folder if given, else the hub; checked (local files not yet read)."""
    if text_files:
        paths = [Path(file) for file in text_files]
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise UserError(f"text file not found: {missing[0]}")
        return TextFiles(paths)
    if data_dir is None:
        return HubWikiText()
    folder = Path(data_dir)
    if not folder.is_dir():
        raise UserError(f"data folder not found: {data_dir}")
    corpus = WikiTextFolder(folder)
    if not corpus.splits:
        raise UserError(f"no wiki.{{train,valid,test}}.{{raw,tokens}} files in {data_dir}")
    return corpus


def read_splits(corpus: Corpus, splits: tuple[str, ...]) -> dict[str, list[str]]:
    """The non-blank lines of each of `splits`; a corpus with none at all is an error (a blank split alone is not:
    `python -m mlm.data` counts it, a training run says which split it lacks)."""
    lines = {split: corpus.lines(split) for split in splits}
    if not any(lines.values()):
        raise UserError(f"the corpus in {corpus.name} has no text")
    return lines


def load_corpus(data_dir: str | None = None, text_files: list[str] | None = None) -> dict[str, list[str]]:
    """Every split's non-blank lines, for a source chosen as `open_corpus` chooses."""
    corpus = open_corpus(data_dir, text_files)
    return read_splits(corpus, corpus.splits)
