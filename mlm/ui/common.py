"""Small helpers every tab shares: escaping, number formats, and whether this server may train at all."""

from __future__ import annotations

import html
import os

from mlm.hub import UserError

CSS = ".mask-note {opacity: 0.8; font-size: 0.9em} .answers-stale .answer {opacity: 0.35}"


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
