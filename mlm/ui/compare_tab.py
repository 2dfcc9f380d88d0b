"""The Compare tab: a sentence with [MASK], two model pickers, each side's top-k guesses (what students see)."""

from __future__ import annotations

import gradio as gr

from mlm import plots
from mlm.hub import UserError
from mlm.predict import MASK, MAX_MASKS, MAX_TOP_K
from mlm.ui.common import escape

EXAMPLES = [
    ["The capital of France is [MASK].", 5],
    ["Paris is the [MASK] of France.", 5],
    ["The keys to the cabinet [MASK] on the table.", 5],
    ["She [MASK] to school every morning.", 5],
    ["The team [MASK] won the championship last year.", 5],
    ["The album was released in [MASK] and reached number one on the charts.", 5],
    ["During the war , the [MASK] was used as a hospital .", 5],
    ["The [MASK] of the river is in the [MASK] mountains.", 5],
    ["I put the [MASK] in the fridge and closed the [MASK].", 5],
]


def card_markdown(card: dict) -> str:
    parameters = f"{card['parameters'] / 1e6:.1f} M parameters" if card["parameters"] else "parameters: n/a"
    quality = (f"validation loss **{card['valid_loss']:.3f}**, perplexity **{card['perplexity']:,.1f}**"
               if card["valid_loss"] is not None else "no validation metrics")
    return (f"**{escape(card['name'])}** — {escape(card['description'])}  \n"
            f"{parameters} · trained on {escape(card['training_data'])} · {quality}")


def column(answer: dict) -> tuple:
    """One model's answer as the Compare tab shows it: (filled sentence, tokens, chart, table)."""
    if "error" in answer:
        return f"⚠️ {answer['error']}", [], plots.guesses_chart(answer), None
    masked = {mask["index"] for mask in answer["masks"]}
    tokens = []
    for index, token in enumerate(answer["tokens"]):
        kind = "[MASK]" if index in masked else "## piece" if token.startswith("##") else None
        tokens += [(token, kind), (" ", None)]  # spaces between the spans show where each token ends
    table = [[mask_number, candidate["token"], float(f"{candidate['score']:.4g}")]
             for mask_number, mask in enumerate(answer["masks"], start=1) for candidate in mask["candidates"]]
    return answer["filled"], tokens, plots.guesses_chart(answer), table


class CompareHandlers:
    """Compare's handlers, mixed into DemoApp (needs `self.registry`)."""

    def default_models(self) -> tuple[str | None, str | None]:
        """The shipped from-scratch and fine-tuned models: the first two entries of models.json that exist."""
        names = self.registry.names()
        return (names[0] if names else None), (names[1] if len(names) > 1 else names[0] if names else None)

    def warm_up(self) -> None:
        """Load the default models before the first student asks (a broken one just shows its error later)."""
        for name in dict.fromkeys(filter(None, self.default_models())):
            self.registry.answer(name, MASK, 1)

    def card(self, name: str | None) -> str:
        if not name:
            return "No model available: train one in the Train tab, or add checkpoints (see README)."
        try:
            return card_markdown(self.registry.card(name))
        except UserError as error:
            return f"⚠️ {escape(error)}"

    def compare(self, text: str, top_k, left: str | None, right: str | None) -> list:
        """Outputs of both columns: (filled sentence, tokens, chart, table) for the left, then the right."""
        answers = self.registry.fill_mask(text, top_k, left or "", right or "")
        return [*column(answers["left"]), *column(answers["right"])]


def build(app, demo: gr.Blocks) -> dict:
    """Lay out the tab inside an open gr.Tab; returns the components other parts of the page update."""
    left_default, right_default = app.default_models()
    models = app.registry.names()
    with gr.Row():
        text = gr.Textbox(EXAMPLES[0][0], label="Sentence", lines=2, scale=4, max_length=5000)
        with gr.Column(scale=1, min_width=160):
            top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="Top-k guesses")
            submit = gr.Button("Predict", variant="primary")
    gr.Markdown(f"Use `[MASK]` (or `[mask]`, `<mask>`), up to {MAX_MASKS} per sentence. Several masks are "
                "predicted **independently**: each guess ignores what the model guesses for the other masks.",
                elem_classes="mask-note")
    columns = []
    with gr.Row(equal_height=False):
        for side, default in (("Left", left_default), ("Right", right_default)):
            with gr.Column():
                picker = gr.Dropdown(models, value=default, label=f"{side} model", elem_id=f"{side.lower()}-model")
                card = gr.Markdown(app.card(default))
                filled = gr.Textbox(label="Filled with the top guess", interactive=False,
                                    elem_id=f"{side.lower()}-filled")
                tokens = gr.HighlightedText(label="WordPiece tokens (## continues a word)", show_legend=True,
                                            show_inline_category=False,
                                            color_map={"[MASK]": "orange", "## piece": "lightblue"})
                chart = gr.Plot(label="Top-k probabilities", elem_id=f"{side.lower()}-chart")
                table = gr.Dataframe(headers=["mask", "token", "probability"], label="Top-k table",
                                     datatype=["number", "str", "number"], interactive=False,
                                     elem_id=f"{side.lower()}-table")
                picker.change(app.card, picker, card, api_visibility="private")
                columns.append((picker, [filled, tokens, chart, table]))
    (left, left_outputs), (right, right_outputs) = columns
    gr.Examples(EXAMPLES, inputs=[text, top_k], label="Examples: facts, grammar agreement, WikiText-style, several masks")
    # The page opens with the first example answered, so students see what to expect.
    for trigger in (submit.click, text.submit, demo.load):
        trigger(app.compare, [text, top_k, left, right], left_outputs + right_outputs,
                api_visibility="private", concurrency_id="inference")
    return {"text": text, "top_k": top_k, "left": left, "right": right}
