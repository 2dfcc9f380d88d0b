"""What makes a fill-mask answer readable for a student (plain functions, no model, no Gradio).

* each candidate in its full sentence, as `pipeline("fill-mask")` gives it in `sequence` (but in the student's own
  spelling: the models are uncased, the student's text is not);
* which candidates are punctuation or `##` word pieces, so the page can hide them on request;
* notes on the text: most of it is `[UNK]` to the model, or it does not look like English (WikiText-2 is English:
  on French or Japanese the models still answer, confidently and meaninglessly);
* one plain sentence saying what a checkpoint read and for how long, to lead its model card.
"""

from __future__ import annotations

import re
import unicodedata

from mlm.serve.checks import MASK

UNKNOWN_SHARE = 0.25  # past this share of [UNK] pieces the model guesses from almost nothing
FOREIGN_LETTER_SHARE = 0.2  # accented/non-Latin letters beyond this share: not English
# Frequent short words of English and of the languages students try first (French, Spanish, German, Italian,
# Portuguese); words that are frequent in English too ("a", "die", "in", ...) are left out of the foreign list.
ENGLISH_WORDS = frozenset("the of and to is was are were in on at it this that with for as by from be has have had "
                          "he she they we you i his her their not but or an a will would can".split())
FOREIGN_WORDS = frozenset("le la les est et un une des du dans pour sur avec qui que ne pas sont était "
                          "el los las es y en con por una del al pero muy "
                          "der das und ist nicht mit ein eine dem den ich sie wir auch "
                          "il che di non sono della per gli lo "
                          "os não um uma com para".split())
CLOSING_PUNCTUATION = frozenset(".,!?")  # what tokenizers' clean-up glues to the word before
WORD = re.compile(r"[^\W\d_]+")


def fill_one(text: str, mask_number: int, token: str) -> str:
    """`text` with its `mask_number`-th [MASK] (from 0) replaced by `token`, the others left as [MASK]; a `##`
    piece, and punctuation that closes a phrase, join the word before them, as the pipeline's decoding does."""
    pieces = text.split(MASK)
    before, after = MASK.join(pieces[:mask_number + 1]), MASK.join(pieces[mask_number + 1:])
    if token.startswith("##"):
        return before.rstrip() + token[2:] + after
    if token in CLOSING_PUNCTUATION:
        return before.rstrip() + token + after
    return before + token + after


def candidate(text: str, mask_number: int, token: str, score: float) -> dict:
    """One guess for one [MASK], as the JSON answer gives it: the token, its probability, its full sentence."""
    return {"token": token, "score": float(score), "sequence": fill_one(text, mask_number, token)}


def is_punctuation(token: str) -> bool:
    return bool(token) and all(unicodedata.category(c).startswith(("P", "S")) for c in token)


def is_piece(token: str) -> bool:
    return token.startswith("##")


def text_notes(text: str, tokens: list[str], special: set[str], unknown: str | None) -> list[str]:
    """Short warnings about the text itself, for the student: what makes the guesses below less meaningful."""
    notes = []
    words = [w.lower() for w in WORD.findall(text.replace(MASK, " "))]
    letters = "".join(words)
    foreign_letters = sum(1 for c in letters if not c.isascii())
    english = sum(w in ENGLISH_WORDS for w in words)
    foreign = sum(w in FOREIGN_WORDS for w in words)
    if letters and (foreign_letters > FOREIGN_LETTER_SHARE * len(letters) or (foreign >= 2 and foreign > english)):
        notes.append("This does not look like English. Both models only read English Wikipedia text, so their "
                     "guesses here are confident-looking nonsense.")
    pieces = [t for t in tokens if t == unknown or t not in special]  # [UNK] is a special token too
    unknowns = sum(t == unknown for t in pieces)
    if unknowns and unknowns >= UNKNOWN_SHARE * len(pieces):
        notes.append(f"{unknowns} of the {len(pieces)} pieces of this text are [UNK]: the model has no word for "
                     "them (emoji, most non-Latin scripts), so it guesses from almost nothing.")
    return notes


def plain_summary(config: dict) -> str:
    """One sentence a 16-year-old can read, to lead a model card: what the model read, how often, from what start."""
    data = "your uploaded text" if config.get("text_files") else "WikiText-2 (about 2 million words of Wikipedia)"
    if config.get("max_train_blocks"):
        data = f"the first {config['max_train_blocks'] * config.get('block_size', 128):,} word pieces of {data}"
    epochs = config.get("epochs")
    times = "" if epochs is None else " once" if epochs == 1 else f" {epochs:g} times"
    if config.get("pretrained"):
        return f"Started from {config['pretrained']}, which had already read lots of English, then read {data}{times}."
    return f"Started knowing nothing (random numbers) and read {data}{times}."
