"""One model's guesses as the Compare and Time-lapse tabs chart them: a bar per candidate, one panel per [MASK]."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mlm.ui.plots.base import empty, label


def percent(score: float) -> str:
    """The one probability format of the Compare tab, in its charts and its tables."""
    return f"{100 * score:.1f}%" if score >= 0.01 else f"{100 * score:.2g}%"


def guesses_chart(answer: dict) -> go.Figure:
    """Horizontal bars of the top-k candidates, one panel per [MASK], best guess on top. Every chart spans 0-100%,
    so equal bars on the left and the right mean equal confidence."""
    masks = answer.get("masks", [])
    if not masks:
        return empty()
    figure = make_subplots(rows=len(masks), cols=1, vertical_spacing=0.25 / len(masks),
                           subplot_titles=[f"[MASK] {number}" for number in range(1, len(masks) + 1)])
    for row, mask in enumerate(masks, start=1):
        candidates = mask["candidates"][::-1]
        figure.add_trace(go.Bar(
            x=[c["score"] for c in candidates], y=[label(c["token"]) for c in candidates], orientation="h",
            text=[percent(c["score"]) for c in candidates], textposition="outside", cliponaxis=False,
            marker_color="#4f7cac", customdata=[label(c.get("sequence", c["token"])) for c in candidates],
            hovertemplate="%{customdata}<br>%{text}<extra></extra>", showlegend=False,
        ), row=row, col=1)
        figure.update_xaxes(range=[0, 1], tickformat=".0%", dtick=0.5, fixedrange=True, row=row, col=1)
        figure.update_yaxes(fixedrange=True, automargin=True, row=row, col=1)
    rows_height = sum(24 * max(len(m["candidates"]), 1) + 40 for m in masks)
    # The axes are fixed, so plotly's zoom and pan buttons only get in the way (on a phone, over the titles).
    figure.update_layout(height=max(180, rows_height), margin=dict(l=10, r=45, t=30, b=10), bargap=0.15,
                         modebar=dict(remove=["zoom", "pan", "select", "lasso", "zoomin", "zoomout", "autoscale",
                                              "resetscale"]))
    return figure
