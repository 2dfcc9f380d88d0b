"""Small helpers every tab shares: escaping, number formats, whether this server may train at all, and outputs by
name."""

from __future__ import annotations

import functools
import html
import os

import gradio as gr

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


# ----------------------------------------------------------------------------------------------------------------
# Outputs by name: a handler returns {name: value}, never a tuple matched to its outputs by position


def outputs(components: dict) -> list:
    """Every component of a name -> component mapping (nested per side, say): an event's `outputs`."""
    return [leaf for value in components.values()
            for leaf in (outputs(value) if isinstance(value, dict) else [value])]


def to_components(values: dict, components: dict) -> dict:
    """A handler's {name: value} (nested like `components`) as Gradio's {component: value}. A name the handler does
    not know is a KeyError at once; a name it leaves out keeps its component as it is (Gradio's rule)."""
    found = {}
    for name, value in values.items():
        target = components[name]
        if isinstance(target, dict):  # a value may be a dict too (gr.update): the components' shape decides
            found.update(to_components(value, target))
        else:
            found[target] = value
    return found


def by_name(handler, components: dict):
    """The event function for Gradio of a handler that returns {name: value}; its signature is the handler's, so
    Gradio passes the inputs as before."""
    @functools.wraps(handler)
    def event(*args):
        # Nothing to change is a single skip: Gradio does not take an empty dict for several outputs.
        return to_components(handler(*args), components) or gr.skip()
    return event


def on(trigger, handler, inputs, components: dict, **options):
    """`trigger(...)` wired to `handler`, whose {name: value} reach `components`' components by name."""
    return trigger(by_name(handler, components), inputs, outputs(components), **options)
