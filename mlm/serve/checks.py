"""What input a model may be asked about: one place, so fill_mask and every Explain view refuse the same text with
the same one-line message (UserError), and the cheapest checks come before any work on the text."""

from __future__ import annotations

import re

from mlm.errors import UserError

MAX_MASKS = 10
MAX_TOP_K = 20
# Checked before anything else touches the text: tokenizing a 40 MB text would hold the only inference worker
# far longer than a student waits (benchmarks/bench_load.py's big-text scenario sends one; its record, in
# benchmarks/records/, has the time it is refused in).
# What a model can read (512 tokens) is rarely over 3,000 characters, so this refuses next to nothing it could read.
MAX_TEXT_CHARS = 5000
# What students type for a mask, in any case: BERT's [MASK] and RoBERTa's <mask>.
MASK_SPELLINGS = re.compile(r"\[mask\]|<mask>", re.IGNORECASE)
MASK = "[MASK]"


def normalise_masks(text: str) -> str:
    return MASK_SPELLINGS.sub(MASK, text)


def check_sentence(text: str, empty_message: str = "Type a sentence first.") -> str:
    """Any text a model reads (with or without [MASK]), stripped and with its masks normalised, or UserError.
    The one place for checks every view shares, so fill_mask and the Explain views refuse the same input; the
    length comes first, before any other work on the text."""
    if isinstance(text, str) and len(text) > MAX_TEXT_CHARS:
        raise UserError(f"The text is too long: {len(text):,} characters, at most {MAX_TEXT_CHARS:,}.")
    if not isinstance(text, str) or not text.strip():
        raise UserError(empty_message)
    return normalise_masks(text.strip())


def check_text(text: str, top_k) -> str:
    """The text with its masks normalised, or UserError with a short message for the student."""
    text = check_masked(text)
    check_top_k(top_k)
    return text


def check_top_k(top_k) -> int:
    if not isinstance(top_k, (int, float)) or top_k != int(top_k) or not 1 <= top_k <= MAX_TOP_K:
        raise UserError(f"Top-k must be a whole number from 1 to {MAX_TOP_K}.")
    return int(top_k)


def check_masked(text: str) -> str:
    """A sentence with 1 to MAX_MASKS masks (normalised), or UserError."""
    text = check_sentence(text, "Type a sentence first, with [MASK] where a word is missing.")
    masks = text.count(MASK)
    if masks == 0:
        raise UserError("Your sentence has no [MASK]: put [MASK] where the model should guess a word.")
    if masks > MAX_MASKS:
        raise UserError(f"Use at most {MAX_MASKS} [MASK]s at a time (this text has {masks}).")
    return text


def check_length(tokens: int, model, limit: int | None = None) -> None:
    model_limit = model.config.max_position_embeddings
    if tokens > model_limit:
        raise UserError(f"The text is too long: {tokens} tokens, this model reads at most {model_limit}.")
    if limit is not None and tokens > limit:
        raise UserError(f"The text is too long: {tokens} tokens, this view reads at most {limit}.")


def encode(model, tokenizer, text: str, limit: int | None = None) -> dict:
    """The model's inputs for a checked text, or UserError when it has more tokens than the model (or `limit`) reads."""
    encoded = tokenizer(text, return_tensors="pt")
    check_length(encoded["input_ids"].shape[1], model, limit)
    return encoded
