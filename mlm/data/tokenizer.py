"""The tokenizer of a run: `load_tokenizer` (transformers' fast tokenizer) or `load_plain_tokenizer` (its files read
with the `tokenizers` library alone, `TokenizerFiles`).

`AutoTokenizer` imports transformers, seconds of a training command's start-up (the start-up phases of the speedrun
log, benchmarks/LOG.md, have the measurements: the `data` phase). A from-scratch run only needs the special-token
ids, the vocabulary size, batch encoding (first run only: the blocks are cached) and a copy of the files for its
checkpoints. `tokenizer.json` holds the whole pipeline, and encoding it with `tokenizers` gives transformers' ids
exactly (tests/unit/test_bert.py compares both, tests/unit/test_blocks.py the blocks they make).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer

from mlm.errors import UserError
from mlm.hub import BERT_BASE, offline_stand_in, resolve

DEFAULT_TOKENIZER = BERT_BASE

# BertTokenizer's special tokens; a tokenizer_config.json or special_tokens_map.json may rename them.
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class TokenizerFiles:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.backend_tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        # transformers encodes without the file's own truncation or padding unless asked: so does this
        self.backend_tokenizer.no_truncation()
        self.backend_tokenizer.no_padding()
        names = dict(SPECIAL_TOKENS)
        for file in ("tokenizer_config.json", "special_tokens_map.json"):
            if (self.folder / file).is_file():
                values = json.loads((self.folder / file).read_text())
                names.update({key: value["content"] if isinstance(value, dict) else value
                              for key, value in values.items() if key in SPECIAL_TOKENS and value})
        ids = {key: self.backend_tokenizer.token_to_id(token) for key, token in names.items()}
        missing = [names[key] for key, value in ids.items() if value is None]
        if missing:
            raise UserError(f"the tokenizer in {folder} lacks the special token {missing[0]}")
        self.mask_token_id, self.pad_token_id, self.unk_token_id = ids["mask_token"], ids["pad_token"], ids["unk_token"]
        self.all_special_ids = sorted(set(ids.values()))

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, lines: list[str], **_ignored) -> dict[str, list[list[int]]]:
        """{"input_ids": ...} with [CLS]/[SEP], as transformers' tokenizer(lines) (its other outputs are not needed)."""
        return {"input_ids": [encoding.ids for encoding in self.backend_tokenizer.encode_batch(lines)]}

    def save_pretrained(self, folder: str | Path) -> None:
        """tokenizer.json as transformers writes it (without the source's own truncation or padding), the other
        files as they are: `AutoTokenizer.from_pretrained(folder)` then loads the tokenizer of the source."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.backend_tokenizer.save(str(Path(folder) / "tokenizer.json"))
        for name in FILES[1:]:
            if (self.folder / name).is_file():
                shutil.copyfile(self.folder / name, Path(folder) / name)


def tokenizer_folder(source: str) -> Path | None:
    """The folder of a resolved tokenizer source, if it is one with a tokenizer.json (a hub name is not)."""
    path = Path(source)
    return path if (path / "tokenizer.json").is_file() else None


def load_tokenizer(name_or_path: str = DEFAULT_TOKENIZER):
    """bert-base-uncased's fast tokenizer: from a folder, the hub, or offline from the MiniLM package (same vocab)."""
    from transformers import AutoTokenizer

    source = resolve(offline_stand_in(name_or_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load a tokenizer from '{name_or_path}': {error}") from error
    if not tokenizer.is_fast or tokenizer.mask_token is None:
        raise UserError(f"'{name_or_path}' is not a fast tokenizer with a [MASK] token")
    return tokenizer


def load_plain_tokenizer(name_or_path: str = DEFAULT_TOKENIZER):
    """The same tokenizer as `TokenizerFiles` where its source is a folder with a tokenizer.json (a from-scratch run
    then never imports transformers), else `load_tokenizer`'s."""
    folder = tokenizer_folder(resolve(offline_stand_in(name_or_path)))
    return TokenizerFiles(folder) if folder else load_tokenizer(name_or_path)
