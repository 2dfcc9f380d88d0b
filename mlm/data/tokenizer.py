"""A fast tokenizer's folder read with the `tokenizers` library alone: what a from-scratch training run needs of it.

`AutoTokenizer` imports transformers (~3 s of a training command's start-up, issue 12); the run only needs the
special-token ids, the vocabulary size, batch encoding (first run only: the blocks are cached) and a copy of the
files for its checkpoints. `tokenizer.json` holds the whole pipeline, and encoding it with `tokenizers` gives
transformers' ids exactly (tests/test_bert.py compares both, tests/test_fastdata.py the blocks they make).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer

from mlm.errors import UserError

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
