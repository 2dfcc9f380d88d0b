"""Lines -> token blocks, the one grouping, cached; and `load_mlm_data`, everything a training run reads.

The grouping is that of Hugging Face's `run_mlm` example: every line is tokenized with [CLS]/[SEP], each batch of
1,000 lines is concatenated and cut into full blocks, and the remainder of each batch is dropped (that is why
`wiki.valid.raw` gives 1,901 blocks of 128). Here the whole split is tokenized in one parallel call of the fast
tokenizer and cut in numpy; tests/unit/test_blocks.py keeps run_mlm's own `datasets.map` version as the reference and
finds the same blocks on real WikiText and on plain text.

Every source's blocks are saved under `MLM_CACHE` (default ~/.cache/mlm) as one tensor file, keyed by what decides
them: the lines (as the source names them, mlm/data/corpus.py), the tokenizer's vocabulary and the block size. A
second run on the same data loads them instead of tokenizing: the start-up phases in the speedrun log
(benchmarks/LOG.md, row 12 and the `data` phase) have the measurements.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from mlm.cache import cache_folder
from mlm.data.corpus import Corpus, open_corpus, read_splits
from mlm.data.tokenizer import DEFAULT_TOKENIZER, load_tokenizer
from mlm.errors import UserError
from mlm.runs.atomic import write_atomic

CACHE_VERSION = "blocks-v1"  # part of every key: bump it when the grouping or the file's contents change
GROUPING_BATCH = 1000  # lines per concatenation batch, as datasets.map(batched=True) in run_mlm
TRAINING_SPLITS = ("train", "validation")


def group_lines(lines: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """(blocks, block_size) int64 by run_mlm's grouping, the whole split tokenized in one batched call."""
    if not lines:  # (transformers' tokenizer fails on an empty batch)
        return torch.empty((0, block_size), dtype=torch.int64)
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
    return torch.from_numpy(np.concatenate(blocks))


def cache_key(corpus: Corpus, splits: tuple[str, ...], tokenizer, block_size: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in corpus.key_parts(splits):
        digest.update(part)
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(f"{block_size}/{CACHE_VERSION}".encode())
    return digest.hexdigest()


def corpus_blocks(corpus: Corpus, splits: tuple[str, ...], tokenizer,
                  block_size: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """({split: blocks}, {split: non-blank lines}) of `splits`, from the cache when they were grouped so before."""
    path = cache_folder() / f"{cache_key(corpus, splits, tokenizer, block_size)}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return saved["blocks"], saved["line_counts"]
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never trusted
            pass
    lines = read_splits(corpus, splits)
    blocks = {split: group_lines(split_lines, tokenizer, block_size) for split, split_lines in lines.items()}
    line_counts = {split: len(split_lines) for split, split_lines in lines.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # not durable: a file lost to a power cut is only rebuilt
        write_atomic(path, lambda temporary: torch.save({"blocks": blocks, "line_counts": line_counts}, temporary),
                     durable=False)
    except OSError:
        pass  # a read-only home only costs the next run the tokenization again
    return blocks, line_counts


@dataclass
class MLMData:
    tokenizer: object
    train_blocks: torch.Tensor  # (N, block_size) int64
    valid_blocks: torch.Tensor
    line_counts: dict[str, int]  # non-blank lines of the train and validation splits


def load_mlm_data(
    data_dir: str | None = None,
    text_files: list[str] | None = None,
    tokenizer: str | object = DEFAULT_TOKENIZER,
    block_size: int = 128,
    max_train_blocks: int | None = None,
    max_eval_blocks: int | None = None,
) -> MLMData:
    """The train and validation blocks of a source chosen as `open_corpus` chooses. `tokenizer`: a name or folder
    for `load_tokenizer`, or a tokenizer already loaded."""
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    corpus = open_corpus(data_dir, text_files)
    for split in TRAINING_SPLITS:
        if split not in corpus.splits:
            raise UserError(f"the corpus has no {split} text ({corpus.name})")
    blocks, line_counts = corpus_blocks(corpus, TRAINING_SPLITS, tok, block_size)
    for split in TRAINING_SPLITS:
        if line_counts[split] == 0:
            raise UserError(f"the corpus has no {split} text ({corpus.name})")
    for split in TRAINING_SPLITS:
        if len(blocks[split]) == 0:
            raise UserError(f"the {split} text is shorter than one {block_size}-token block")
    return MLMData(
        tokenizer=tok,
        train_blocks=blocks["train"][:max_train_blocks],
        valid_blocks=blocks["validation"][:max_eval_blocks],
        line_counts=line_counts,
    )
