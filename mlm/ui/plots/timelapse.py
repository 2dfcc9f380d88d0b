"""The time-lapse chart: how likely each final guess was at every snapshot, over the validation loss curve.

One panel per [MASK] (a line per final top candidate), the run's validation loss underneath on the same x axis,
and the snapshot being shown marked by a vertical line through every panel. Snapshots are log-spaced, so the x
axis is the step on a log scale; step 0 (the random start) is drawn at 0.5 and labelled 0.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly import colors as plotly_colors
from plotly.subplots import make_subplots

from mlm.ui.plots.base import label

COLOURS = plotly_colors.qualitative.Plotly
MARK = "#d62728"


def x_position(step: int) -> float:
    return step if step > 0 else 0.5


def history_figure(history: dict, valid: list[dict], current_step: int | None) -> go.Figure:
    """`history` from SnapshotModels.candidate_history; `valid` the run's validation records (metrics.jsonl)."""
    masks = history.get("masks", [])
    snapshots = history.get("snapshots", [])
    rows = len(masks) + 1
    figure = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                           row_heights=[1.0] * len(masks) + [0.8],
                           subplot_titles=[f"[MASK] {n}: probability of the final guesses" for n in range(1, rows)]
                           + ["validation loss"])
    steps = [x_position(s["step"]) for s in snapshots]
    for row, mask in enumerate(masks, start=1):
        for number, candidate in enumerate(mask["candidates"]):
            token = label(candidate["token"])
            figure.add_trace(go.Scatter(
                x=steps, y=candidate["probabilities"], mode="lines+markers", name=token,
                legendgroup=f"mask{row}", legendgrouptitle_text=f"[MASK] {row}" if number == 0 else None,
                line=dict(color=COLOURS[number % len(COLOURS)]),
                hovertemplate=f"{token}: %{{y:.3f}} at step %{{customdata}}<extra></extra>",
                customdata=[s["step"] for s in snapshots]), row=row, col=1)
        figure.update_yaxes(rangemode="tozero", tickformat=".2~%", row=row, col=1)
    figure.add_trace(go.Scatter(x=[x_position(r["step"]) for r in valid], y=[r["loss"] for r in valid],
                                mode="lines+markers", name="validation loss", line=dict(color="grey"),
                                marker=dict(size=4), showlegend=False), row=rows, col=1)
    figure.add_trace(go.Scatter(x=steps, y=[s["valid_loss"] for s in snapshots], mode="markers", name="snapshots",
                                marker=dict(color="black", symbol="diamond", size=8), showlegend=False,
                                hovertemplate="snapshot at step %{customdata}: loss %{y:.3f}<extra></extra>",
                                customdata=[s["step"] for s in snapshots]), row=rows, col=1)
    if current_step is not None:  # the snapshot shown: a vertical line through every panel
        losses = [r["loss"] for r in valid] or [s["valid_loss"] for s in snapshots]
        for row in range(1, rows + 1):
            probabilities = [p for c in masks[row - 1]["candidates"] for p in c["probabilities"]] if row < rows else []
            low, high = (0, max(probabilities)) if row < rows else (min(losses), max(losses))
            figure.add_trace(go.Scatter(x=[x_position(current_step)] * 2, y=[low, high], mode="lines",
                                        line=dict(color=MARK, dash="dash", width=2), showlegend=False,
                                        hoverinfo="skip"), row=row, col=1)
    ticks = sorted({s["step"] for s in snapshots})
    figure.update_xaxes(type="log", tickvals=[x_position(s) for s in ticks], ticktext=[str(s) for s in ticks])
    figure.update_xaxes(title_text="step (log scale; the snapshots)", row=rows, col=1)
    figure.update_yaxes(title_text="loss", row=rows, col=1)
    figure.update_layout(height=220 * len(masks) + 260, margin=dict(l=10, r=10, t=40, b=10),
                         legend=dict(groupclick="toggleitem"))
    return figure
