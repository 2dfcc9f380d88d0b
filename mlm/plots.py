"""Plotly figures for the app: one model's guesses per mask, and loss / perplexity curves of training runs.

Every string placed in a figure is HTML-escaped, because plotly renders tags such as <b> or <br> in labels.
"""

from __future__ import annotations

import csv
import html
import math
import os
from pathlib import Path

import plotly.graph_objects as go
from plotly import colors as plotly_colors
from plotly.subplots import make_subplots

UNIFORM_GUESS_LOSS = math.log(30522)  # cross-entropy of guessing uniformly over BERT's 30,522 WordPieces
REPORT_LOSS = 6.48  # the original assignment report's final validation loss
RUN_COLOURS = plotly_colors.qualitative.Plotly
METRIC_COLUMNS = ("run", "step", "epoch", "split", "loss", "perplexity", "top1", "top5", "lr", "tokens_per_s", "elapsed_s")


def guesses_chart(answer: dict) -> go.Figure:
    """Horizontal bars of the top-k candidates, one panel per [MASK], best guess on top."""
    masks = answer.get("masks", [])
    if not masks:
        return go.Figure(layout=dict(height=120, margin=dict(l=10, r=10, t=10, b=10),
                                     xaxis=dict(visible=False), yaxis=dict(visible=False)))
    figure = make_subplots(rows=len(masks), cols=1, vertical_spacing=0.25 / len(masks),
                           subplot_titles=[f"[MASK] {number}" for number in range(1, len(masks) + 1)])
    for row, mask in enumerate(masks, start=1):
        candidates = mask["candidates"][::-1]
        figure.add_trace(go.Bar(
            x=[c["score"] for c in candidates], y=[html.escape(c["token"]) for c in candidates], orientation="h",
            text=[f"{100 * c['score']:.2g}%" for c in candidates], textposition="auto", marker_color="#4f7cac",
            hovertemplate="%{y}: %{x:.4f}<extra></extra>", showlegend=False,
        ), row=row, col=1)
        figure.update_xaxes(rangemode="tozero", tickformat=".2~%", row=row, col=1)
    rows_height = sum(24 * len(m["candidates"]) + 40 for m in masks)
    figure.update_layout(height=max(180, rows_height), margin=dict(l=10, r=10, t=30, b=10), bargap=0.15)
    return figure


X_AXES = ("step", "epoch")  # epochs put runs with different batch sizes (steps of different sizes) side by side


def curves(runs: dict[str, list[dict]], x_axis: str = "step") -> tuple[go.Figure, go.Figure]:
    """(loss figure, validation perplexity figure) for several runs overlaid, against the step or the epoch."""
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis must be one of {X_AXES}, got {x_axis!r}")
    loss, perplexity = go.Figure(), go.Figure()
    for number, (name, records) in enumerate(runs.items()):
        label, colour = html.escape(name), RUN_COLOURS[number % len(RUN_COLOURS)]  # one colour per run
        train = [r for r in records if r.get("split") == "train"]
        valid = [r for r in records if r.get("split") == "valid"]
        loss.add_trace(go.Scatter(x=[r[x_axis] for r in train], y=[r["loss"] for r in train], mode="lines",
                                  name=f"{label}: train", legendgroup=label, line=dict(color=colour)))
        loss.add_trace(go.Scatter(x=[r[x_axis] for r in valid], y=[r["loss"] for r in valid], mode="lines+markers",
                                  name=f"{label}: validation", legendgroup=label, line=dict(color=colour, dash="dot")))
        perplexity.add_trace(go.Scatter(x=[r[x_axis] for r in valid], y=[r["perplexity"] for r in valid],
                                        mode="lines+markers", name=label, line=dict(color=colour)))
    loss.add_hline(y=UNIFORM_GUESS_LOSS, line_dash="dash", line_color="grey",
                   annotation_text=f"uniform guess: ln(30522) ≈ {UNIFORM_GUESS_LOSS:.2f}")
    loss.add_hline(y=REPORT_LOSS, line_dash="dash", line_color="firebrick",
                   annotation_text=f"original report: {REPORT_LOSS}")
    loss.update_layout(title="Loss (cross-entropy at masked tokens)", xaxis_title=x_axis, yaxis_title="loss",
                       height=420, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))
    perplexity.update_layout(title="Validation perplexity", xaxis_title=x_axis, yaxis_title="perplexity (log)",
                             yaxis_type="log", height=360, margin=dict(l=10, r=10, t=40, b=10))
    return loss, perplexity


def write_metrics_csv(runs: dict[str, list[dict]], path: Path) -> Path:
    """Written beside and then moved into place, so a download in progress never reads half a file."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for name, records in runs.items():
            for record in records:
                writer.writerow({"run": name, **record})
    os.replace(partial, path)
    return path
