"""Plotly figures for the Explain tab: guesses layer by layer, attention from one token, surprise per token.

They take the JSON the Explain API returns (mlm.serve.explain), so a figure shows exactly what a script would get.
Every string placed in a figure goes through mlm.ui.plots.base.label.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mlm.ui.plots.base import empty, label

ROW_PX = 26


def layer_name(layer: int) -> str:
    return "embeddings" if layer == 0 else f"layer {layer}"


def layers_figure(answer: dict) -> go.Figure:
    """Per [MASK], a table-like heatmap: one row per layer (embeddings on top, the model's answer at the bottom),
    one column per rank; each cell names the guess and is coloured by its probability."""
    masks = answer.get("masks")
    if not masks:
        return empty(answer.get("error", ""))
    figure = make_subplots(rows=len(masks), cols=1, vertical_spacing=0.12 / len(masks),
                           subplot_titles=[f"[MASK] {n}" for n in range(1, len(masks) + 1)])
    for row, mask in enumerate(masks, start=1):
        layers = mask["layers"]
        labels = [layer_name(layer["layer"]) for layer in layers]
        scores = [[c["score"] for c in layer["candidates"]] for layer in layers]
        text = [[f"{label(c['token'])}<br>{100 * c['score']:.1f}%" for c in layer["candidates"]] for layer in layers]
        figure.add_trace(go.Heatmap(
            z=scores, x=[f"#{rank}" for rank in range(1, len(scores[0]) + 1)], y=labels, text=text,
            texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1, showscale=row == 1,
            colorbar=dict(title="p", len=0.5), hovertemplate="%{y}, %{x}: %{text}<extra></extra>",
        ), row=row, col=1)
        figure.update_yaxes(autorange="reversed", row=row, col=1)
    height = sum(ROW_PX * 1.6 * len(m["layers"]) + 50 for m in masks)
    figure.update_layout(height=max(220, height), margin=dict(l=10, r=10, t=30, b=10))
    return figure


def token_axis(tokens: list[str]) -> dict:
    """A category axis cannot repeat a label ('the' twice): positions on the axis, tokens as their labels."""
    return dict(tickmode="array", tickvals=list(range(len(tokens))), ticktext=[label(t) for t in tokens],
                tickangle=-45)


def head_average(layer: list, position: int) -> list[float]:
    """One layer's attention weights from `position`, averaged over its heads."""
    return [sum(column) / len(layer) for column in zip(*(head[position] for head in layer))]


def attention_figures(answer: dict, position: int) -> tuple[go.Figure, go.Figure]:
    """(every layer and head, the average over heads per layer): the weights from `position` over the tokens."""
    tokens, layers = answer["tokens"], answer["layers"]
    position = min(max(int(position), 0), len(tokens) - 1)  # another tokenizer may cut the sentence shorter
    heads = [(layer, head) for layer in range(len(layers)) for head in range(len(layers[layer]))]
    rows = [layers[layer][head][position] for layer, head in heads]
    labels = [f"L{layer + 1} H{head + 1}" for layer, head in heads]
    hover = "from " + label(tokens[position]) + " to %{customdata}: %{z:.3f}<extra>%{y}</extra>"
    custom = [[label(t) for t in tokens]] * len(rows)
    every = go.Figure(go.Heatmap(z=rows, y=labels, x=list(range(len(tokens))), customdata=custom, colorscale="Viridis",
                                 zmin=0, zmax=1, hovertemplate=hover, colorbar=dict(title="weight")))
    every.update_layout(height=max(260, 9 * len(rows) + 130), margin=dict(l=10, r=10, t=30, b=10),
                        xaxis=token_axis(tokens),
                        title=f"Attention from {label(tokens[position])} (position {position}), every head")
    every.update_yaxes(autorange="reversed", dtick=1, tickfont=dict(size=8))
    averages = [head_average(layer, position) for layer in layers]
    average = go.Figure(go.Heatmap(z=averages, y=[f"layer {n}" for n in range(1, len(layers) + 1)],
                                   x=list(range(len(tokens))), customdata=[[label(t) for t in tokens]] * len(layers),
                                   colorscale="Viridis", zmin=0, zmax=1, hovertemplate=hover))
    average.update_layout(height=ROW_PX * len(layers) + 150, margin=dict(l=10, r=10, t=30, b=10),
                          xaxis=token_axis(tokens), title="Average over the heads of each layer")
    average.update_yaxes(autorange="reversed")
    return every, average


def surprise_figure(answer: dict) -> go.Figure:
    """One strip of cells, one per scored token, coloured by its surprise in bits (-log2 p with it masked)."""
    tokens = answer.get("tokens")
    if not tokens:
        return empty(answer.get("error", ""))
    bits = [-t["log_prob"] / math.log(2) for t in tokens]
    labels = [label(t["token"]) for t in tokens]
    figure = go.Figure(go.Heatmap(
        z=[bits], x=list(range(len(tokens))), y=["bits"],
        text=[[f"{label}<br>{b:.1f}" for label, b in zip(labels, bits)]],
        texttemplate="%{text}", colorscale="Reds", zmin=0, zmax=max(16.0, max(bits)),
        hovertemplate="%{text} bits<extra></extra>", colorbar=dict(title="bits"),
    ))
    figure.update_layout(height=170, margin=dict(l=10, r=10, t=10, b=10), xaxis=dict(visible=False),
                         yaxis=dict(visible=False))
    return figure
