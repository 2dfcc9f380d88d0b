"""The Explain tab: why each model guesses what it guesses, both models side by side.

Five views (the computations are mlm.serve.explain, the figures mlm.ui.plots.explain): candidate scoring, the guess layer by
layer, attention from a token, how surprising each word is (with minimal pairs), and the training corruption.
"""

from __future__ import annotations

import math
import random

import gradio as gr

from mlm.serve.checks import MASK, MAX_TOP_K
from mlm.serve.explain import MASK_PROBABILITY_RANGE, Explainer
from mlm.ui.common import escape, on
from mlm.ui.plots import explain as explain_plots

SENTENCE = "The capital of France is [MASK]."
WORDS = "paris, london, france, tokenization"
SURPRISE_SENTENCE = "The keys to the cabinet are on the table."
PAIR = ("The keys to the cabinet are on the table.", "The keys to the cabinet is on the table.")
TRAINING_SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
SIDES = ("left", "right")
ROLE_LABELS = {"masked": "[MASK] · 80%", "random": "random word · 10%", "kept": "unchanged · 10%"}
WHY = ("**Why not always `[MASK]`?** `[MASK]` never appears in the text a trained model reads later; swapping some "
       "picked words for random ones or leaving them as they are makes the model work out every word it reads, "
       "not only the blanks.")


def warning(answer: dict) -> str:
    return f"⚠️ {escape(answer['error'])}"


def candidates_view(answer: dict) -> dict:
    """{"rows" of the table, "note"} for one side's score_candidates answer."""
    if "error" in answer:
        return {"rows": None, "note": warning(answer)}
    rows = [[number, word["word"], word["piece"], float(f"{word['score']:.4g}"), word["rank"]]
            for number, mask in enumerate(answer["masks"], start=1) for word in mask["words"]]
    split = {w["word"]: w["pieces"] for w in answer["masks"][0]["words"] if len(w["pieces"]) > 1}
    notes = [f"**{escape(word)}** is {len(pieces)} WordPieces ({escape(' '.join(pieces))}): scored by its first, "
             f"`{escape(pieces[0])}`, as the fill-mask pipeline does." for word, pieces in split.items()]
    return {"rows": rows,
            "note": "  \n".join(notes) or "Rank 1 is the model's top guess; the vocabulary has 30,522 WordPieces."}


def layers_note(answer: dict) -> str:
    if "error" in answer:
        return warning(answer)
    layers = len(answer["masks"][0]["layers"]) - 1
    return (f"{layers} encoder layers, each read through the model's own MLM head (the logit lens). "
            "The bottom row is what Compare shows.")


def attention_view(answer: dict | None, position, layer, head) -> dict:
    """One side's {"every" head, "average" per layer, "spans": the sentence coloured by one layer/head's weights,
    "note"}."""
    if not answer or "error" in answer:
        message = answer["error"] if answer else ""
        return {"every": explain_plots.empty(message), "average": explain_plots.empty(), "spans": [],
                "note": warning(answer) if answer else ""}
    every, average = explain_plots.attention_figures(answer, position or 0)
    tokens, layers = answer["tokens"], answer["layers"]
    source = min(max(int(position or 0), 0), len(tokens) - 1)
    chosen = layers[min(int(layer or 1), len(layers)) - 1]
    if head:
        weights = chosen[min(int(head), len(chosen)) - 1][source]
        which = f"head {min(int(head), len(chosen))}"
    else:
        weights = explain_plots.head_average(chosen, source)
        which = "the average of its heads"
    spans = [span for token, weight in zip(tokens, weights) for span in ((token, round(weight, 3)), (" ", None))]
    note = (f"{len(layers)} layers × {len(chosen)} heads. Below: the sentence coloured by layer "
            f"{min(int(layer or 1), len(layers))}, {which}, from **{escape(tokens[source])}**.")
    return {"every": every, "average": average, "spans": spans, "note": note}


def surprise_note(answer: dict) -> str:
    if "error" in answer:
        return warning(answer)
    worst = min(answer["tokens"], key=lambda t: t["log_prob"])
    return (f"Pseudo-log-likelihood **{answer['pseudo_log_likelihood']:.2f}** nats, pseudo-perplexity "
            f"**{answer['pseudo_perplexity']:.1f}**; most surprising: **{escape(worst['token'])}** "
            f"({-worst['log_prob'] / math.log(2):.1f} bits).")


def pair_rows(first: dict, second: dict) -> list:
    """One table row per model: each sentence's pseudo-log-likelihood and which one the model prefers."""
    if "error" in first or "error" in second:
        return [first["model"], "⚠️ " + (first.get("error") or second.get("error")), "", ""]
    a, b = first["pseudo_log_likelihood"], second["pseudo_log_likelihood"]
    prefers = "A" if a > b else "B" if b > a else "neither"
    return [first["model"], round(a, 3), round(b, 3), f"{prefers} (by {abs(a - b):.2f} nats)"]


def training_spans(answer: dict) -> dict:
    """{"spans" highlighted, "summary"} for a training_view answer."""
    if "error" in answer:
        return {"spans": [], "summary": warning(answer)}
    spans = []
    for token in answer["tokens"]:
        text = token["shown"] if token["role"] in (None, "kept") else f"{token['shown']} ({token['token']})"
        spans += [(text, ROLE_LABELS.get(token["role"])), (" ", None)]
    roles = [t["role"] for t in answer["tokens"] if t["role"]]
    words = sum(t["token"] not in ("[CLS]", "[SEP]") for t in answer["tokens"])
    share = f"{100 * answer['mask_probability']:.0f}%"
    summary = (f"Seed {answer['seed']}: {len(roles)} of {words} tokens picked at {share} "
               f"([CLS] and [SEP] never are): {roles.count('masked')} became `[MASK]`, {roles.count('random')} a "
               f"random word, {roles.count('kept')} stayed. The model is trained to recover all {len(roles)}.")
    return {"spans": spans, "summary": summary}


class ExplainTab:
    """Explain's handlers: each view for both models, {"left": ..., "right": ...} by name."""

    def __init__(self, explainer: Explainer):
        self.explainer = explainer

    def explain_candidates(self, text: str, words: str, left: str | None, right: str | None) -> dict:
        return {side: candidates_view(self.explainer.score_candidates(text, words, model or ""))
                for side, model in zip(SIDES, (left, right))}

    def explain_layers(self, text: str, top_k, left: str | None, right: str | None) -> dict:
        answers = {side: self.explainer.layer_guesses(text, top_k, model or "")
                   for side, model in zip(SIDES, (left, right))}
        return {side: {"plot": explain_plots.layers_figure(answer), "note": layers_note(answer)}
                for side, answer in answers.items()}

    def explain_attention(self, text: str, left: str | None, right: str | None) -> dict:
        """Both sides' attention "answer" (kept in the page's state) and "layer"/"head" pickers, and the token
        picker ("source")."""
        answers = {side: self.explainer.attention(text, model or "") for side, model in zip(SIDES, (left, right))}
        tokens = next((a["tokens"] for a in answers.values() if "tokens" in a), [])
        first_mask = tokens.index(MASK) if MASK in tokens else 0
        shown: dict = {"source": gr.update(choices=[(f"{i}: {t}", i) for i, t in enumerate(tokens)], value=first_mask)}
        for side, answer in answers.items():
            layers = answer.get("layers") or [[[]]]
            heads = [("average of the heads", 0)] + [(f"head {n}", n) for n in range(1, len(layers[0]) + 1)]
            shown[side] = {"answer": answer,
                           "layer": gr.update(choices=[(f"layer {n}", n) for n in range(1, len(layers) + 1)],
                                              value=len(layers)),
                           "head": gr.update(choices=heads, value=0)}
        return shown

    def show_attention(self, left_answer, right_answer, position, left_layer, left_head, right_layer,
                       right_head) -> dict:
        return {"left": attention_view(left_answer, position, left_layer, left_head),
                "right": attention_view(right_answer, position, right_layer, right_head)}

    def explain_surprise(self, text: str, left: str | None, right: str | None) -> dict:
        answers = {side: self.explainer.score_sentence(text, model or "")
                   for side, model in zip(SIDES, (left, right))}
        return {side: {"plot": explain_plots.surprise_figure(answer), "note": surprise_note(answer)}
                for side, answer in answers.items()}

    def minimal_pair(self, first: str, second: str, left: str | None, right: str | None) -> list:
        """Rows [model, PLL of A, PLL of B, which one it prefers] for both models (one output: the table)."""
        score = self.explainer.score_sentence
        return [pair_rows(score(first, model or ""), score(second, model or ""))
                for model in dict.fromkeys((left, right))]

    def training_sample(self, text: str, percent, seed) -> dict:
        """{"spans", "summary", "seed"}: the sentence as a training step with this seed would corrupt it."""
        answer = self.explainer.training_view(text, (percent or 0) / 100, None if seed is None else int(seed))
        return {**training_spans(answer), "seed": answer.get("seed", seed)}

    def new_training_sample(self, text: str, percent) -> dict:
        return self.training_sample(text, percent, random.randrange(2**31))


def side_by_side(make) -> dict:
    """{side: make(side)}, each side's components (a name -> component dict) in one of two columns."""
    components = {}
    with gr.Row(equal_height=False):
        for side in SIDES:
            with gr.Column():
                components[side] = make(side)
    return components


def build(tab: ExplainTab, page: gr.Tab, models: list[str], defaults: dict[str, str | None]) -> dict:
    """Lay out the tab inside its open gr.Tab `page` (model pickers offering `models`, `defaults` by side);
    everything is computed when the tab is opened or asked again."""
    gr.Markdown("Why does each model guess what it guesses? Type a sentence with `[MASK]`, then read the views "
                "below, the two models side by side.")
    with gr.Row():
        text = gr.Textbox(SENTENCE, label="Sentence with [MASK]", lines=1, scale=4,
                          elem_id="explain-text")
        top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="Top-k per layer", scale=1)
        run = gr.Button("Explain", variant="primary", scale=1)
    pickers = side_by_side(lambda side: gr.Dropdown(models, value=defaults[side], label=f"{side.title()} model",
                                                    elem_id=f"explain-{side}-model", elem_classes="model-picker"))
    left, right = pickers["left"], pickers["right"]
    model_inputs = [left, right]

    with gr.Column(elem_id="view-candidates"):
        gr.Markdown("## 1. Candidate scoring\nHow likely is each of your words at the mask, and where does it rank?")
        words = gr.Textbox(WORDS, label="Words to score (comma-separated)", elem_id="explain-words")
        candidates = side_by_side(lambda side: {
            "rows": gr.Dataframe(headers=["mask", "word", "piece", "probability", "rank"],
                                 datatype=["number", "str", "str", "number", "number"], interactive=False,
                                 label=f"{side.title()} model", elem_id=f"{side}-candidates"),
            "note": gr.Markdown(elem_id=f"{side}-candidates-note")})

    with gr.Column(elem_id="view-layers"):
        gr.Markdown("## 2. Layer by layer\nThe top guesses read after the embeddings and after every layer.")
        layers = side_by_side(lambda side: {"plot": gr.Plot(label=f"{side.title()} model", elem_id=f"{side}-layers"),
                                            "note": gr.Markdown(elem_id=f"{side}-layers-note")})

    with gr.Column(elem_id="view-attention"):
        gr.Markdown("## 3. Attention\nWhat one token (the mask, unless you pick another) attends to, in every layer "
                    "and head. Many heads park their weight on `[CLS]` or `[SEP]` when nothing else matters to them.")
        source = gr.Dropdown([], label="Attention from the token", elem_id="attention-source")
        # per side: the answer (kept in the page's state), its layer and head pickers, and what they show
        attention = side_by_side(lambda side: {
            "answer": gr.State(),
            "layer": gr.Dropdown([], label="Layer", elem_id=f"{side}-attention-layer"),
            "head": gr.Dropdown([], label="Head", elem_id=f"{side}-attention-head"),
            "every": gr.Plot(label=f"{side.title()} model: every head", elem_id=f"{side}-attention"),
            "average": gr.Plot(label="Average over heads", elem_id=f"{side}-attention-average"),
            "spans": gr.HighlightedText(label="The weights on the sentence", show_legend=True,
                                        elem_id=f"{side}-attention-text"),
            "note": gr.Markdown(elem_id=f"{side}-attention-note")})
        picked = {"source": source, **{side: {name: attention[side][name] for name in ("answer", "layer", "head")}
                                       for side in SIDES}}
        shown = {side: {name: attention[side][name] for name in ("every", "average", "spans", "note")}
                 for side in SIDES}

    with gr.Column(elem_id="view-surprise"):
        gr.Markdown("## 4. How surprising is each word\nEach token masked in turn and scored (pseudo-log-likelihood): "
                    "red cells surprised the model; the fewer bits, the more expected.")
        with gr.Row():
            sentence = gr.Textbox(SURPRISE_SENTENCE, label="Sentence (no [MASK])", scale=4,
                                  elem_id="surprise-text")
            score = gr.Button("Score the sentence", scale=1)
        surprise = side_by_side(lambda side: {
            "plot": gr.Plot(label=f"{side.title()} model", elem_id=f"{side}-surprise"),
            "note": gr.Markdown(elem_id=f"{side}-surprise-note")})
        gr.Markdown("**Minimal pair**: which of two sentences does each model find more likely (higher is better)?")
        with gr.Row():
            first = gr.Textbox(PAIR[0], label="Sentence A")
            second = gr.Textbox(PAIR[1], label="Sentence B")
            compare_pair = gr.Button("Compare the pair", scale=0)
        pair = gr.Dataframe(headers=["model", "A: pseudo-log-likelihood", "B: pseudo-log-likelihood", "prefers"],
                            interactive=False, elem_id="minimal-pair")

    with gr.Column(elem_id="view-training"):
        gr.Markdown("## 5. What the model sees in training\nEach step picks some tokens for the model to predict; of "
                    "those, 80% become `[MASK]`, 10% a random word, 10% stay. This is the training code itself.")
        with gr.Row():
            training_text = gr.Textbox(TRAINING_SENTENCE, label="Sentence", scale=4,
                                       elem_id="training-text")
            low, high = MASK_PROBABILITY_RANGE
            percent = gr.Slider(100 * low, 100 * high, value=15, step=1, label="Tokens picked (%)", scale=2)
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, scale=1)
            sample = gr.Button("New sample", scale=1)
        training = gr.HighlightedText(label="What the model reads", show_legend=True, elem_id="training-view",
                                      color_map=dict(zip(ROLE_LABELS.values(), ("orange", "violet", "lightgreen"))))
        training_summary = gr.Markdown(elem_id="training-summary")
        gr.Markdown(WHY)

    def wire(triggers, handler, inputs, components: dict) -> list:
        return [on(trigger, handler, inputs, components, api_visibility="private", concurrency_id="inference")
                for trigger in triggers]

    opened = [page.select, run.click, text.submit, left.change, right.change]
    wire(opened + [words.submit], tab.explain_candidates, [text, words, *model_inputs], candidates)
    wire(opened + [top_k.release], tab.explain_layers, [text, top_k, *model_inputs], layers)
    # show_attention's inputs, in its parameters' order: both answers, the token, each side's layer and head
    show_inputs = [attention["left"]["answer"], attention["right"]["answer"], source,
                   *(attention[side][name] for side in SIDES for name in ("layer", "head"))]
    for event in wire(opened, tab.explain_attention, [text, *model_inputs], picked):
        on(event.then, tab.show_attention, show_inputs, shown, api_visibility="private")
    for picker in show_inputs[2:]:
        on(picker.input, tab.show_attention, show_inputs, shown, api_visibility="private")
    wire([page.select, score.click, sentence.submit, left.change, right.change], tab.explain_surprise,
         [sentence, *model_inputs], surprise)
    for trigger in (page.select, compare_pair.click, left.change, right.change):  # one output: the table
        trigger(tab.minimal_pair, [first, second, *model_inputs], pair, api_visibility="private",
                concurrency_id="inference")
    sampled = {"spans": training, "summary": training_summary, "seed": seed}
    wire([page.select, training_text.submit, percent.release, seed.submit], tab.training_sample,
         [training_text, percent, seed], sampled)
    wire([sample.click], tab.new_training_sample, [training_text, percent], sampled)
    return {"left": left, "right": right}
