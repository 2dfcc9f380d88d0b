"""Corpus -> cleaned lines -> 128-token blocks -> dynamically masked batches.

Three sources give the same thing, a `DatasetDict` of non-blank lines:
  * the hub dataset `wikitext` / `wikitext-2-raw-v1` (the default, when the hub is reachable);
  * a local folder of WikiText files, `wiki.{train,valid,test}.raw` or the tokenized `wiki.*.tokens`
    (whose `<unk>` becomes the tokenizer's `[UNK]`);
  * plain text files (a teacher's own corpus), with the last 10% of lines held out for validation.

Blocks are grouped exactly as Hugging Face's `run_mlm` example does: every line is tokenized with [CLS]/[SEP], and
each batch of 1,000 lines is concatenated and cut into full blocks (the remainder of each batch is dropped).
That is why `wiki.valid.raw` gives 1,901 blocks. Every step is cached by `datasets`, so a second run starts fast.

Masking (`mask_tokens`) is plain tensor code, so it runs on whatever device the batch is on: 15% of the
non-special tokens are chosen; of those 80% become [MASK], 10% a random token and 10% stay, the recipe of
`DataCollatorForLanguageModeling`. Validation uses masks drawn once from a fixed seed, so losses compare across
epochs, runs and machines.

    python -m mlm.data --data-dir ../shared/data/wikitext-2-raw-v1 --json
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlm.hub import BERT_BASE, hub_reachable, offline_stand_in, resolve
from mlm.errors import UserError

DEFAULT_TOKENIZER = BERT_BASE
WIKITEXT = ("wikitext", "wikitext-2-raw-v1")
WIKITEXT_STEMS = {"train": "wiki.train", "validation": "wiki.valid", "test": "wiki.test"}
GROUPING_BATCH = 1000  # lines per concatenation batch, as datasets.map(batched=True) in run_mlm
VALID_MASK_SEED = 1234  # fixed: validation masks must not depend on the training seed
HELD_OUT_FRACTION = 0.1  # of a plain-text corpus, when no validation file is given
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer


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
    """The same tokenizer read with `tokenizers` alone where its source is a folder with a tokenizer.json (a
    from-scratch run then never imports transformers: ~3 s of start-up), else `load_tokenizer`'s."""
    from mlm.data.tokenizer import TokenizerFiles, tokenizer_folder

    folder = tokenizer_folder(resolve(offline_stand_in(name_or_path)))
    return TokenizerFiles(folder) if folder else load_tokenizer(name_or_path)


# ----------------------------------------------------------------------------------------------------------------
# Corpus: a DatasetDict of non-blank lines in a "text" column


def _wikitext_files(data_dir: Path) -> tuple[dict[str, str], bool]:
    """Per split, the raw file if present, else the tokenized one; and whether any tokenized file is used."""
    files, tokenized = {}, False
    for split, stem in WIKITEXT_STEMS.items():
        for suffix in (".raw", ".tokens"):
            path = data_dir / f"{stem}{suffix}"
            if path.is_file():
                files[split] = glob.escape(str(path))  # a folder named like "data[2]" is not a glob pattern
                tokenized |= suffix == ".tokens"
                break
    return files, tokenized


def _text_corpus(text_files: list[str]):
    from datasets import DatasetDict, load_dataset

    missing = [f for f in text_files if not Path(f).is_file()]
    if missing:
        raise UserError(f"text file not found: {missing[0]}")
    # escaped: datasets reads data_files as glob patterns, and a name like "notes[1].txt" would match nothing
    lines = load_dataset("text", data_files={"train": [glob.escape(f) for f in text_files]})["train"]
    lines = lines.filter(lambda row: bool(row["text"].strip()))
    if len(lines) < 2:
        raise UserError("the text corpus has fewer than two non-blank lines")
    held_out = max(1, math.ceil(len(lines) * HELD_OUT_FRACTION))
    cut = len(lines) - held_out
    return DatasetDict(train=lines.select(range(cut)), validation=lines.select(range(cut, len(lines))))


def load_corpus(data_dir: str | None = None, text_files: list[str] | None = None):
    """Non-blank lines per split from a WikiText folder, plain text files, or the hub (in that order of choice)."""
    from datasets import DatasetDict, load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # cached steps take well under a second; their bars would only bury messages

    if text_files:
        return _text_corpus(text_files)
    if data_dir is not None:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise UserError(f"data folder not found: {data_dir}")
        files, tokenized = _wikitext_files(folder)
        if not files:
            raise UserError(f"no wiki.{{train,valid,test}}.{{raw,tokens}} files in {data_dir}")
        corpus = load_dataset("text", data_files=files)
        if tokenized:  # the non-raw WikiText marks rare words as <unk>; BERT's vocabulary calls it [UNK]
            corpus = corpus.map(lambda row: {"text": row["text"].replace("<unk>", "[UNK]")})
    else:
        if not hub_reachable():
            raise UserError("the hub is not reachable (offline): pass --data-dir with a local WikiText-2 folder")
        try:
            corpus = load_dataset(*WIKITEXT)
        except Exception as error:  # noqa: BLE001 - any hub failure becomes the same one-line hint
            raise UserError(f"loading {'/'.join(WIKITEXT)} from the hub failed ({error}); pass --data-dir") from error
    corpus = corpus.filter(lambda row: bool(row["text"].strip()))
    if sum(len(split) for split in corpus.values()) == 0:
        raise UserError(f"the corpus in {data_dir} has no text")
    return DatasetDict(corpus)


# ----------------------------------------------------------------------------------------------------------------
# Blocks


def group_into_blocks(lines, tokenizer, block_size: int = 128):
    """`run_mlm` grouping: tokenize each line with [CLS]/[SEP], concatenate per 1,000 lines, cut full blocks."""
    from datasets.fingerprint import Hasher

    def tokenize(batch):
        return {"input_ids": tokenizer(batch["text"])["input_ids"]}

    def group(batch):
        ids = [token for line in batch["input_ids"] for token in line]
        usable = len(ids) // block_size * block_size
        return {"input_ids": [ids[i : i + block_size] for i in range(0, usable, block_size)]}

    vocab_hash = Hasher.hash(tokenizer.backend_tokenizer.to_str())
    tokenized = lines.map(
        tokenize, batched=True, batch_size=GROUPING_BATCH, remove_columns=lines.column_names,
        new_fingerprint=Hasher.hash([lines._fingerprint, vocab_hash, "tokenize-v1"]),
    )
    return tokenized.map(
        group, batched=True, batch_size=GROUPING_BATCH,
        new_fingerprint=Hasher.hash([tokenized._fingerprint, block_size, "group-v1"]),
    )


def blocks_tensor(blocks) -> torch.Tensor:
    """(num_blocks, block_size) int64; an empty split gives an empty tensor."""
    if len(blocks) == 0:
        return torch.empty(0, 0, dtype=torch.long)
    ids = blocks.with_format("arrow")["input_ids"].combine_chunks().flatten().to_numpy()  # zero-copy from the cache
    return torch.from_numpy(ids.reshape(len(blocks), -1).astype(np.int64))


# ----------------------------------------------------------------------------------------------------------------
# Masking


@dataclass(frozen=True)
class MaskingSpec:
    """What masking needs to know about the tokenizer, as plain numbers (cheap to ship to any device)."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float = 0.15

    @classmethod
    def from_tokenizer(cls, tokenizer, probability: float = 0.15) -> "MaskingSpec":
        return cls(tokenizer.mask_token_id, len(tokenizer), tuple(sorted(tokenizer.all_special_ids)), probability)

    def is_special(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Which ids are special tokens, by one lookup (a GPU step at batch 8 is ~300 short kernels; comparing
        with each special id took ten of them). The table is made on the first call, before any graph capture."""
        return _special_table(self.special_ids, self.vocab_size, input_ids.device)[input_ids]


@functools.cache
def _special_table(special_ids: tuple[int, ...], vocab_size: int, device: torch.device) -> torch.Tensor:
    table = torch.zeros(max((vocab_size, *special_ids)) + 1, dtype=torch.bool)
    table[list(special_ids)] = True
    return table.to(device)


def mask_tokens(input_ids: torch.Tensor, spec: MaskingSpec, generator: torch.Generator | None = None,
                probability: torch.Tensor | None = None):
    """(inputs, labels) with BERT's 80/10/10 masking; labels are IGNORE_INDEX where nothing is predicted.

    `probability`, a 0-dim tensor on the batch's device, replaces `spec.probability`: a captured CUDA graph then reads
    its current value at every replay, so the masking rate can follow a schedule.

    Two uniform draws replace DataCollatorForLanguageModeling's three Bernoulli draws with the same distribution:
    u < p chooses a token; then v < 0.8 -> [MASK], 0.8 <= v < 0.9 -> random token, else kept. It never syncs with
    the host, so it can run inside a captured CUDA graph.
    """
    device = input_ids.device
    special = spec.is_special(input_ids)
    rate = spec.probability if probability is None else probability
    chosen = (torch.rand(input_ids.shape, device=device, generator=generator) < rate) & ~special
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    action = torch.rand(input_ids.shape, device=device, generator=generator)
    random_words = torch.randint(spec.vocab_size, input_ids.shape, device=device, generator=generator)
    inputs = torch.where(chosen & (action < 0.8), spec.mask_id, input_ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_words, inputs)
    return inputs, labels


def fixed_validation_masks(blocks: torch.Tensor, spec: MaskingSpec):
    """Validation inputs/labels masked once at 15% from a fixed seed, identical on every machine and run."""
    generator = torch.Generator().manual_seed(VALID_MASK_SEED)
    return mask_tokens(blocks, MaskingSpec(spec.mask_id, spec.vocab_size, spec.special_ids, 0.15), generator)


def max_predictions(num_tokens: int, probability: float) -> int:
    """A static cap on masked positions per batch: the mean plus six standard deviations of the binomial count.

    The fast path gathers this many positions so shapes never change (compilation and CUDA graphs need that).
    Exceeding it has probability below 1e-9 per batch; the overflow would only drop a few targets from one loss.
    """
    mean = num_tokens * probability
    return min(num_tokens, int(mean + 6 * math.sqrt(mean * (1 - probability)) + 8))


# ----------------------------------------------------------------------------------------------------------------
# Everything a training run needs


@dataclass
class MLMData:
    tokenizer: object
    train_blocks: torch.Tensor  # (N, block_size) int64
    valid_blocks: torch.Tensor
    line_counts: dict[str, int]


def load_mlm_data(
    data_dir: str | None = None,
    text_files: list[str] | None = None,
    tokenizer: str | object = DEFAULT_TOKENIZER,
    block_size: int = 128,
    max_train_blocks: int | None = None,
    max_eval_blocks: int | None = None,
) -> MLMData:
    """`tokenizer`: a name or folder for `load_tokenizer`, or a tokenizer already loaded."""
    from mlm.data import blocks as fastdata  # (imports this module)

    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    if not text_files and fastdata.has_wikitext_files(data_dir):  # the same blocks without `datasets`, cached
        blocks, line_counts = fastdata.wikitext_blocks(data_dir, tok, block_size)
    else:
        corpus = load_corpus(data_dir, text_files)
        for split in ("train", "validation"):
            if split not in corpus or len(corpus[split]) == 0:
                raise UserError(f"the corpus has no {split} text ({data_dir or text_files or 'hub'})")
        blocks = {split: blocks_tensor(group_into_blocks(corpus[split], tok, block_size)) for split in ("train", "validation")}
        line_counts = {split: len(lines) for split, lines in corpus.items()}
    for split, tensor in blocks.items():
        if len(tensor) == 0:
            raise UserError(f"the {split} text is shorter than one {block_size}-token block")
    return MLMData(
        tokenizer=tok,
        train_blocks=blocks["train"][:max_train_blocks],
        valid_blocks=blocks["validation"][:max_eval_blocks],
        line_counts=line_counts,
    )


def corpus_stats(data_dir=None, text_files=None, tokenizer=DEFAULT_TOKENIZER, block_size=128) -> dict:
    tok = load_tokenizer(tokenizer)
    corpus = load_corpus(data_dir, text_files)
    return {
        split: {"lines": len(lines), "blocks": len(group_into_blocks(lines, tok, block_size))}
        for split, lines in corpus.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlm.data", description="Line and block counts per split.")
    parser.add_argument("--data-dir", help="local WikiText folder (default: the hub's wikitext-2-raw-v1)")
    parser.add_argument("--text-file", action="append", dest="text_files", help="plain text corpus (repeatable)")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        stats = corpus_stats(args.data_dir, args.text_files, args.tokenizer, args.block_size)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for split, row in stats.items():
            print(f"{split:<12}{row['lines']:>10,} lines{row['blocks']:>10,} blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
