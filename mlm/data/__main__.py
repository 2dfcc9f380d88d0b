"""`python -m mlm.data`: line and block counts per split of a corpus, as a training run would group it.

    python -m mlm.data --data-dir ../shared/data/wikitext-2-raw-v1 --json
"""

from __future__ import annotations

import argparse
import json
import sys

from mlm.data.blocks import corpus_blocks
from mlm.data.corpus import open_corpus
from mlm.data.tokenizer import DEFAULT_TOKENIZER, load_tokenizer
from mlm.errors import UserError


def corpus_stats(data_dir=None, text_files=None, tokenizer=DEFAULT_TOKENIZER, block_size=128) -> dict:
    """{split: {"lines": non-blank lines, "blocks": full blocks}} for every split the source has."""
    tok = load_tokenizer(tokenizer)
    corpus = open_corpus(data_dir, text_files)
    blocks, line_counts = corpus_blocks(corpus, corpus.splits, tok, block_size)
    return {split: {"lines": line_counts[split], "blocks": len(blocks[split])} for split in corpus.splits}


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
