"""What every figure of the app shares: text made safe for plotly, and the small empty figure.

Plotly renders tags such as <b> or <br> in labels and decodes only &amp; &lt; &gt; and numeric entities, so every
string placed in a figure goes through `label`: `<`, `>` and `&` escaped, quotes left alone (escaped, `"` would
read `&quot;`).
"""

from __future__ import annotations

import html

import plotly.graph_objects as go


def label(text) -> str:
    return html.escape(str(text), quote=False)


def empty(message: str = "") -> go.Figure:
    """A small blank figure, with the reason there is nothing to show."""
    figure = go.Figure(layout=dict(height=120, margin=dict(l=10, r=10, t=10, b=10),
                                   xaxis=dict(visible=False), yaxis=dict(visible=False)))
    if message:
        figure.add_annotation(text=label(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return figure
