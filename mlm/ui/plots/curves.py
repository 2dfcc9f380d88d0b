"""The Curves tab's figures: loss and perplexity of several training runs overlaid (every string placed in a
figure goes through mlm.ui.plots.base.label)."""

from __future__ import annotations

import hashlib
import math

import plotly.graph_objects as go
from plotly import colors as plotly_colors

from mlm.ui.plots.base import label

UNIFORM_GUESS_LOSS = math.log(30522)  # cross-entropy of guessing uniformly over BERT's 30,522 WordPieces
REPORT_LOSS = 6.48  # the original assignment report's final validation loss
# Colours no one confuses (a run's comes from its name, see run_colour): D3's ten and black
RUN_COLOURS = plotly_colors.qualitative.D3 + ["#000000"]
X_AXES = ("step", "epoch")  # epochs put runs with different batch sizes (steps of different sizes) side by side
SPARSE_POINTS = 40  # a curve with fewer points than this shows each one as a marker (a new run's first points)
LEGEND_ROW_PX = 24


def run_colour(name: str) -> str:
    """A run's colour, from its name alone: it keeps its colour whatever else is shown beside it."""
    digest = int(hashlib.sha1(name.encode()).hexdigest(), 16)
    return RUN_COLOURS[digest % len(RUN_COLOURS)]


def log_ticks(values: list[float]) -> dict:
    """Tick values and labels for a log axis: 1-2-5 steps per decade (1-3 past three decades, every digit within
    one), written out in full ("20", "5,000") instead of plotly's "5, 2, 10k, 5, 2"."""
    positive = [v for v in values if v and v > 0 and math.isfinite(v)]
    if not positive:
        return {}
    smallest, largest = min(positive), max(positive)
    low, high = math.floor(math.log10(smallest)), math.ceil(math.log10(largest))
    ticks = []
    for steps in ((1, 3), (1, 2, 5), range(1, 10)):  # the fewest steps that give at least three ticks
        ticks = [m * 10 ** e for e in range(low, high + 1) for m in steps if smallest / 1.5 <= m * 10 ** e <= largest * 1.5]
        if len(ticks) >= 3 and (steps != (1, 3) or high - low > 3):
            break
    return dict(tickvals=ticks, ticktext=[f"{t:,.0f}" if t >= 1 else f"{t:g}" for t in ticks])


def focus_range(records: list[dict], x_axis: str) -> list[float] | None:
    """The x range of a whole run, from its first point to its planned last step (or epoch)."""
    last = next((r for r in reversed(records) if r.get("total_steps") and r.get("step")), None)
    if last is None:
        return None
    if x_axis == "step":
        return [0, last["total_steps"] * 1.02]
    return [0, last["epoch"] * last["total_steps"] / last["step"] * 1.02]


def curves(runs: dict[str, list[dict]], x_axis: str = "step", focus: str | None = None) -> tuple[go.Figure, go.Figure]:
    """(loss figure, validation perplexity figure) for several runs overlaid, against the step or the epoch.

    `focus` names a run in progress: both plots are zoomed to its whole planned length, so it is not squeezed
    into a corner by runs thousands of steps longer (a double-click on the plot shows every run).
    """
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis must be one of {X_AXES}, got {x_axis!r}")
    loss, perplexity = go.Figure(), go.Figure()
    for name, records in runs.items():
        name_label, colour = label(name), run_colour(name)
        train = [r for r in records if r.get("split") == "train"]
        valid = [r for r in records if r.get("split") == "valid"]
        line = "lines+markers" if len(train) < SPARSE_POINTS else "lines"
        loss.add_trace(go.Scatter(x=[r[x_axis] for r in train], y=[r["loss"] for r in train], mode=line,
                                  name=f"{name_label}: train", legendgroup=name_label, line=dict(color=colour)))
        loss.add_trace(go.Scatter(x=[r[x_axis] for r in valid], y=[r["loss"] for r in valid], mode="lines+markers",
                                  name=f"{name_label}: validation", legendgroup=name_label, showlegend=False,
                                  line=dict(color=colour, dash="dot")))
        perplexity.add_trace(go.Scatter(x=[r[x_axis] for r in valid], y=[r["perplexity"] for r in valid],
                                        mode="lines+markers", name=name_label, showlegend=False,
                                        line=dict(color=colour)))
    loss.add_hline(y=UNIFORM_GUESS_LOSS, line_dash="dash", line_color="grey",
                   annotation_text=f"uniform guess: ln(30522) ≈ {UNIFORM_GUESS_LOSS:.2f}")
    loss.add_hline(y=REPORT_LOSS, line_dash="dash", line_color="firebrick",
                   annotation_text=f"original report: {REPORT_LOSS}")
    # The legend sits under the loss plot with room reserved for it (one row per run on a phone), so it never
    # covers a plot; the perplexity plot uses the same colours and needs no legend of its own.
    legend_px = LEGEND_ROW_PX * len(runs) + 40
    loss.update_layout(title="Loss at the masked words<br><sup>solid: training · dotted: validation</sup>",
                       xaxis_title=x_axis, yaxis_title="loss", height=400 + legend_px,
                       margin=dict(l=10, r=10, t=60, b=legend_px),
                       legend=dict(orientation="h", yanchor="top", y=-0.15, x=0))
    perplexity.update_layout(title="Validation perplexity (colours as above)", xaxis_title=x_axis,
                             yaxis_title="perplexity (log scale)", yaxis=dict(type="log", **log_ticks(
                                 [r.get("perplexity") for records in runs.values() for r in records])),
                             height=360, margin=dict(l=10, r=10, t=40, b=10))
    if focus in runs and (span := focus_range(runs[focus], x_axis)):
        for figure in (loss, perplexity):
            figure.update_xaxes(range=span)
    return loss, perplexity

