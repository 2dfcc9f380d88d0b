"""Small helpers every tab shares: escaping, number formats, and whether this server may train at all."""

from __future__ import annotations

import html
import os

from mlm.errors import UserError

CSS = ".mask-note {opacity: 0.8; font-size: 0.9em} .answers-stale .answer {opacity: 0.35}" + """
.model-picker input {text-overflow: ellipsis; padding-right: 24px !important}
@media (max-width: 640px) {
  .model-picker input {font-size: 13px}
  .guesses .sizing-body, .guesses [data-heading="3"], .guesses [data-col="3"] {display: none}
  .guesses .header-table, .guesses .virtual-body {width: 100% !important}
  .guesses th, .guesses .body-cell {min-width: 0 !important; max-width: none !important; overflow-wrap: anywhere}
  .guesses .header-table, .guesses .body-cell span {font-size: 12px}
  .guesses .cell-wrap, .guesses .body-cell, .guesses .body-cell span {padding-left: 1px !important; padding-right: 1px !important}
  .guesses [data-heading="0"], .guesses [data-col="0"] {flex: 0 0 47% !important; width: 47% !important}
  .guesses [data-heading="1"], .guesses [data-col="1"] {flex: 0 0 29% !important; width: 29% !important}
  .guesses [data-heading="2"], .guesses [data-col="2"] {flex: 0 0 24% !important; width: 24% !important}
}"""  # on a phone a top-k table (guesses_table) drops "in the sentence" and fits its half of the screen, and a
# model picker (half a phone's width) ends its name with "…" before the arrow: the card below names the model whole


def training_allowed() -> bool:
    """On a Hugging Face Space (SPACE_ID is set) anyone could burn the machine: there, the operator opts in."""
    return not os.environ.get("SPACE_ID") or os.environ.get("MLM_ALLOW_TRAINING", "") == "1"


def escape(text) -> str:
    return html.escape(str(text))


def number(value, pattern: str = "{:,.3f}") -> str:
    return "–" if value is None else pattern.format(value)


def optional(value, kind):
    """A form field as `kind`, or None where it was left empty (the preset's value applies)."""
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError) as error:
        raise UserError(f"'{value}' is not a number") from error


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
