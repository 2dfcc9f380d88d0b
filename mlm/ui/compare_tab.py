"""The Compare tab: a sentence with [MASK], two model pickers, each side's top-k guesses (what students see).

Whatever changes what a side should show (the sentence, its model, top-k, an example, the hide options) predicts
that side again in the same event, with Gradio's progress cue on it until the new answer is in: a column never
shows one input's answer beside another input.
"""

from __future__ import annotations

import gradio as gr

from mlm.errors import UserError
from mlm.serve.answers import Predictor, fill_in
from mlm.serve.checks import MASK, MAX_MASKS, MAX_TOP_K, normalise_masks
from mlm.serve.readable import is_piece, is_punctuation
from mlm.serve.registry import ModelRegistry
from mlm.ui.common import escape, on
from mlm.ui.plots.guesses import guesses_chart, percent

EXAMPLES = [  # at most 60 characters each: Gradio cuts longer examples with "..."
    "The capital of France is [MASK].",
    "Paris is the [MASK] of France.",
    "The keys to the cabinet [MASK] on the table.",
    "She [MASK] to school every morning.",
    "The team [MASK] won the championship last year.",
    "The album was released in [MASK] and reached number one.",
    "During the war , the [MASK] was used as a hospital .",
    "The [MASK] of the river is in the [MASK] mountains.",
    "I put the [MASK] in the fridge and closed the [MASK].",
]
STALE_ON = "() => { document.body.classList.add('answers-stale'); }"
STALE_OFF = "() => { document.body.classList.remove('answers-stale'); }"
HIDE_OPTIONS = {"punctuation": is_punctuation, "## pieces": is_piece}
SIDES = ("left", "right")
FILLED_LABEL = "Filled with the top guess"

EXPLAINER = """
- **`[MASK]`** hides a word. The model has to guess it from the words around it, the way you fill a gap in a test.
  This "fill the gap" game is exactly how these models were trained (a *masked language model*).
- **Probability**: how sure the model is about each guess, from 0% to 100%. All its guesses together add up to
  100%, so five guesses at 20% each mean it has no idea. Both charts use the same 0-100% scale.
- **Word pieces and `##`**: the models know about 30,000 pieces. A rare word is split into pieces: `playing` can be
  `play` + `##ing`; `##` means "glued to the piece before".
- **`[CLS]` and `[SEP]`**: markers the model always adds at the start and the end of a text. `[UNK]` is a piece
  it has no entry for (emoji, most non-Latin letters).
- **Uncased**: these models read everything in lower case, so `France` and `france` are the same to them.
- **Loss**: how surprised the model is by the right answer, on average, on text it never trained on. Lower is better.
  Guessing blindly among 30,522 pieces gives 10.33.
- **Perplexity** = e<sup>loss</sup>: "the model hesitates as if between this many words". 40 is far better than 30,000.
- **"Original report 6.48"**: the validation loss a first version of this from-scratch model reached; the curves in
  the Curves tab show it as a red line to beat.
"""


def card_markdown(card: dict) -> str:
    """A plain sentence first (what the model read, how often), then the numbers: size once, loss, perplexity."""
    parameters = f"{card['parameters'] / 1e6:.1f} million parameters" if card["parameters"] else "size unknown"
    quality = (f"validation loss **{card['valid_loss']:.3f}**, perplexity **{card['perplexity']:,.1f}**"
               if card["valid_loss"] is not None else "no validation metrics")
    plain, details = (card["summary"], f"{card['description']} ") if card.get("summary") else (card["description"], "")
    return (f"**{escape(card['name'])}**: {escape(plain)}  \n"
            f"<small>{escape(details)}{parameters} · {quality}</small>")


def shown_candidates(candidates: list[dict], top_k: int, hide: list[str]) -> list[dict]:
    hidden = [HIDE_OPTIONS[option] for option in hide or [] if option in HIDE_OPTIONS]
    return [c for c in candidates if not any(test(c["token"]) for test in hidden)][:int(top_k)]


def column(answer: dict, text, top_k, hide: list[str]) -> dict:
    """One model's answer as the Compare tab shows it: {"filled" sentence, "tokens", "chart", "table"}."""
    if "error" in answer:
        return {"filled": gr.update(value=f"⚠️ {answer['error']}", label=FILLED_LABEL), "tokens": [],
                "chart": guesses_chart(answer), "table": None}
    masks = [{**mask, "candidates": shown_candidates(mask["candidates"], top_k, hide)} for mask in answer["masks"]]
    masked = {mask["index"] for mask in masks}
    tokens = []
    for index, token in enumerate(answer["tokens"]):
        kind = "[MASK]" if index in masked else "## piece" if token.startswith("##") else None
        tokens += [(token, kind), (" ", None)]  # spaces between the spans show where each token ends
    table = [[candidate["token"], percent(candidate["score"]), number, candidate["sequence"]]
             for number, mask in enumerate(masks, start=1) for candidate in mask["candidates"]]
    best = [mask["candidates"][0]["token"] if mask["candidates"] else MASK for mask in masks]
    filled = fill_in(normalise_masks(text.strip()), best) if hide else answer["filled"]  # text was checked
    label = FILLED_LABEL + (" (in lower case: this model is uncased)" if answer.get("uncased") else "")
    return {"filled": gr.update(value=filled, label=label), "tokens": tokens, "chart": guesses_chart({"masks": masks}),
            "table": table}


def notes_markdown(answers: list[dict]) -> str:
    notes = dict.fromkeys(note for answer in answers for note in answer.get("notes", []))
    return "\n".join(f"- ⚠️ {escape(note)}" for note in notes)


def default_models(registry: ModelRegistry) -> tuple[str | None, str | None]:
    """The shipped from-scratch and fine-tuned models: the first two entries of models.json that exist (what
    Compare and Explain show first)."""
    names = registry.names()
    return (names[0] if names else None), (names[1] if len(names) > 1 else names[0] if names else None)


class CompareTab:
    """Compare's handlers: both columns' answers, one column's, the model cards."""

    def __init__(self, registry: ModelRegistry, predictor: Predictor):
        self.registry, self.predictor = registry, predictor

    def warm_up(self) -> None:
        """Load the default models before the first student asks (a broken one just shows its error later)."""
        for name in dict.fromkeys(filter(None, default_models(self.registry))):
            self.predictor.answer(name, MASK, 1)

    def card(self, name: str | None) -> str:
        if not name:
            return "No model available: train one in the Train tab, or add checkpoints (see README)."
        try:
            return card_markdown(self.registry.card(name))
        except UserError as error:
            return f"⚠️ {escape(error)}"

    def answers(self, text: str, top_k, models: list[str | None], hide: list[str]) -> list[dict]:
        """Each model's answer; with candidates hidden, the models are asked for more so top-k rows remain."""
        asked = MAX_TOP_K if hide and top_k in range(1, MAX_TOP_K + 1) else top_k
        if len(models) == 1:
            return [self.predictor.answer(models[0] or "", text, asked)]
        pair = self.predictor.fill_mask(text, asked, models[0] or "", models[1] or "")
        return [pair["left"], pair["right"]]

    def compare(self, text: str, top_k, left: str | None, right: str | None, hide: list[str] | None = None) -> dict:
        """Both columns: {"notes", "left": column, "right": column} (see `column`)."""
        answers = self.answers(text, top_k, [left, right], hide or [])
        return {"notes": notes_markdown(answers), **{side: column(answer, text, top_k, hide or [])
                                                     for side, answer in zip(SIDES, answers)}}

    def compare_one(self, text: str, top_k, model: str | None, hide: list[str] | None = None) -> dict:
        """A side whose model changed: {"notes", "card", and its column's names}, all in one event, so the card
        never describes a model whose guesses are not shown yet."""
        answers = self.answers(text, top_k, [model], hide or [])
        return {"notes": notes_markdown(answers), "card": self.card(model),
                **column(answers[0], text, top_k, hide or [])}


def guesses_table(elem_id: str, classes: tuple[str, ...] = ()) -> gr.Dataframe:
    """The top-k table, rows as `column` writes them (Compare's sides and the Time-lapse tab); on a phone it
    drops its last column, "in the sentence" (the `guesses` class: see common.CSS)."""
    return gr.Dataframe(headers=["guess", "prob.", "mask", "in the sentence"], label="Top-k guesses",
                        datatype=["str", "str", "number", "str"], interactive=False, wrap=True, elem_id=elem_id,
                        elem_classes=["guesses", *classes])


def side_row(make) -> dict:
    """One row holding the same component for both sides ({side: component}), next to each other even on a phone
    (each side gets half the width), so a student compares the two answers without scrolling from one to the
    other."""
    with gr.Row(equal_height=False):
        made = {}
        for side in SIDES:
            with gr.Column(min_width=140):
                made[side] = make(side)
    return made


def build(tab: CompareTab, demo: gr.Blocks) -> dict:
    """Lay out the tab inside an open gr.Tab; returns the components other parts of the page update."""
    defaults = dict(zip(SIDES, default_models(tab.registry)))
    models = tab.registry.names()
    with gr.Accordion("What am I looking at?", open=False):
        gr.Markdown(EXPLAINER)
    with gr.Row():
        # One line: Enter predicts. No max_length: the browser would cut a long paste without a word; the
        # server answers "too long" instead.
        text = gr.Textbox(EXAMPLES[0], label="Sentence", lines=1, max_lines=4, scale=4, elem_id="sentence",
                          info=f"Press Enter to predict. Put [MASK] where a word is missing (up to {MAX_MASKS}).")
        with gr.Column(scale=1, min_width=160):
            top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="Top-k guesses", elem_id="top-k")
            submit = gr.Button("Predict", variant="primary")
    examples = gr.Examples([[example] for example in EXAMPLES], inputs=[text], examples_per_page=len(EXAMPLES),
                           label="Try an example (click one): facts, grammar agreement, WikiText-style, several masks")
    gr.Markdown("Several masks are predicted **independently**: each guess ignores what the model guesses for the "
                "other masks.", elem_classes="mask-note")
    hide = gr.CheckboxGroup(list(HIDE_OPTIONS), label="Hide guesses that are", elem_id="hide")
    notes = gr.Markdown(elem_id="notes")
    pickers = side_row(lambda side: gr.Dropdown(models, value=defaults[side], label=f"{side.title()} model",
                                                elem_id=f"{side}-model", elem_classes="model-picker"))
    cards = side_row(lambda side: gr.Markdown(tab.card(defaults[side]), elem_id=f"{side}-card"))
    filled = side_row(lambda side: gr.Textbox(label=FILLED_LABEL, interactive=False, lines=1,
                                              max_lines=6, elem_id=f"{side}-filled",
                                              elem_classes="answer"))
    charts = side_row(lambda side: gr.Plot(show_label=False, elem_id=f"{side}-chart",
                                            elem_classes="answer"))
    tables = side_row(lambda side: guesses_table(f"{side}-table", ("answer",)))
    tokens = side_row(lambda side: gr.HighlightedText(label="WordPiece tokens (## continues a word)",
                                                      show_legend=True, show_inline_category=False,
                                                      color_map={"[MASK]": "orange", "## piece": "lightblue"},
                                                      elem_id=f"{side}-tokens"))
    columns = {side: {"filled": filled[side], "tokens": tokens[side], "chart": charts[side], "table": tables[side]}
               for side in SIDES}
    both = {"notes": notes, **columns}
    inputs = [text, top_k, pickers["left"], pickers["right"], hide]

    def predict_both(trigger, **options):
        return on(trigger, tab.compare, inputs, both, api_visibility="private", concurrency_id="fill_mask",
                  **options).then(None, js=STALE_OFF)

    # The page opens with the first example answered, so students see what to expect.
    # While the sentence is being edited, the answers below are for the old one: they are greyed until predicted.
    text.change(None, js=STALE_ON)
    for trigger in (submit.click, text.submit, hide.change, demo.load):  # (a picker answers one side only)
        predict_both(trigger)
    predict_both(top_k.change, trigger_mode="always_last")  # dragging the slider answers for where it stops
    predict_both(examples.load_input_event.then)
    for side in SIDES:
        on(pickers[side].input, tab.compare_one, [text, top_k, pickers[side], hide],
           {"notes": notes, "card": cards[side], **columns[side]},
           api_visibility="private", concurrency_id="fill_mask", trigger_mode="always_last")
    return {"text": text, "top_k": top_k, "left": pickers["left"], "right": pickers["right"]}
