"""A local WikiText folder -> the same token blocks as `mlm.data.corpus`, without `datasets`, and cached as one tensor file.

Start-up counts when a class waits for Train: importing `datasets` (with pyarrow and pandas) and its per-1,000-line
maps cost seconds, and its cache does not survive a fresh machine. Here the lines are read as `datasets`' text
loader reads them (universal newlines, split on "\n"), `<unk>` becomes `[UNK]` for the tokenized files, blank
lines go, every line is tokenized in one parallel call of the fast tokenizer, and the `run_mlm` grouping (concatenate
each 1,000 lines, cut full blocks, drop the remainder) is done in numpy. The blocks equal `mlm.data.corpus`'s exactly
(tests/test_fastdata.py). They are then saved under `MLM_CACHE` (default ~/.cache/mlm), keyed by the files' bytes,
the tokenizer's vocabulary and the block size, so a second run loads them in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from mlm.cache import cache_folder
from mlm.data.corpus import GROUPING_BATCH, _wikitext_files
from mlm.errors import UserError

CACHE_VERSION = "blocks-v1"


def read_lines(path: str) -> list[str]:
    """Non-blank lines as `datasets`' text loader gives them, `<unk>` as `[UNK]` in the tokenized WikiText."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith(".tokens"):
        text = text.replace("<unk>", "[UNK]")
    return [line for line in text.split("\n") if line.strip()]


def group_lines(lines: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """(blocks, block_size) int64 by run_mlm's grouping, the whole split tokenized in one batched call."""
    ids = tokenizer(lines, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    lengths = np.fromiter((len(line) for line in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((token for line in ids for token in line), dtype=np.int64, count=int(lengths.sum()))
    ends = np.cumsum(lengths)
    blocks, start = [], 0
    for first in range(0, len(lines), GROUPING_BATCH):  # each 1,000-line batch is cut on its own
        stop = int(ends[min(first + GROUPING_BATCH, len(lines)) - 1])
        usable = (stop - start) // block_size * block_size
        blocks.append(flat[start : start + usable].reshape(-1, block_size))
        start = stop
    return torch.from_numpy(np.concatenate(blocks) if blocks else np.empty((0, block_size), dtype=np.int64))


def cache_key(files: dict[str, str], tokenizer, block_size: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for split in sorted(files):
        digest.update(split.encode() + Path(files[split]).name.encode() + Path(files[split]).read_bytes())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(f"{block_size}/{CACHE_VERSION}".encode())
    return digest.hexdigest()


def wikitext_blocks(data_dir: str, tokenizer, block_size: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """({split: blocks}, {split: non-blank lines}) for the train and validation files of a WikiText folder."""
    files, _ = _wikitext_files(Path(data_dir))
    files = {split: path for split, path in files.items() if split in ("train", "validation")}
    path = cache_folder() / f"{cache_key(files, tokenizer, block_size)}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return saved["blocks"], saved["line_counts"]
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never trusted
            pass
    lines = {split: read_lines(file) for split, file in files.items()}
    if not any(lines.values()):
        raise UserError(f"the corpus in {data_dir} has no text")
    for split, split_lines in lines.items():
        if not split_lines:
            raise UserError(f"the corpus has no {split} text ({data_dir})")
    blocks = {split: group_lines(split_lines, tokenizer, block_size) for split, split_lines in lines.items()}
    line_counts = {split: len(split_lines) for split, split_lines in lines.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"blocks": blocks, "line_counts": line_counts}, staging)
        os.replace(staging, path)  # atomic: a reader sees the whole file or none
    except OSError:
        pass  # a read-only home only costs the next run the tokenization again
    return blocks, line_counts


def has_wikitext_files(data_dir: str | None) -> bool:
    """Whether the fast path applies: a local folder with both a train and a validation file."""
    if data_dir is None or not Path(data_dir).is_dir():
        return False
    files, _ = _wikitext_files(Path(data_dir))
    return {"train", "validation"} <= set(files)

