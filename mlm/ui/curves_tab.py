"""The Curves tab: loss and perplexity of several runs overlaid, live while one trains, with a CSV download."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from mlm.ui.plots import curves as plots
from mlm.runs.checkpoint import METRICS_FILE, read_metrics

CACHED_VIEWS = 32  # (selection, x axis, focus, metrics versions) -> figures and CSV: one entry per kind of page
CSV_KEEP_S = 600  # a CSV nobody was sent for this long is deleted (a training run makes a new one per update)
# Plotly sizes a plot when it is drawn; one drawn while its tab was hidden stays narrow. A resize once the tab
# shows lets it fill its box again (plotly's responsive handler skips hidden plots).
RESIZE_JS = "() => { setTimeout(() => window.dispatchEvent(new Event('resize')), 100); }"


def metrics_version(folder: Path) -> tuple[int, int]:
    try:
        stat = (folder / METRICS_FILE).stat()
    except OSError:
        return 0, 0
    return stat.st_mtime_ns, stat.st_size


class CurvesCache:
    """The last few views built, shared by every page: the timer's refresh on N pages builds the figures and
    writes the CSV once per change, not N times. The CSV's name comes from what it holds, so pages showing the
    same runs share one file and pages showing others never overwrite it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.views: OrderedDict[tuple, tuple] = OrderedDict()

    def get(self, key: tuple, csv_dir: Path, build):
        with self.lock:
            view = self.views.get(key)
            if view is not None and Path(view[2]).exists():
                self.views.move_to_end(key)
                os.utime(view[2])  # in use: not pruned
                return view
        loss, perplexity, runs = build()
        path = csv_dir / f"metrics-{hashlib.sha1(repr(key[0::3]).encode()).hexdigest()[:16]}.csv"
        plots.write_metrics_csv(runs, path)
        with self.lock:
            self.views[key] = view = (loss, perplexity, str(path))
            while len(self.views) > CACHED_VIEWS:
                self.views.popitem(last=False)
            self.prune(csv_dir)
        return view

    def prune(self, csv_dir: Path) -> None:
        """Delete the CSV files nobody was sent for CSV_KEEP_S (under the lock, so never one being handed out)."""
        cutoff = time.time() - CSV_KEEP_S
        for path in csv_dir.glob("metrics-*.csv"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass  # already gone


class CurvesHandlers:
    """Curves' handlers, mixed into DemoApp (needs `self.jobs`, `self.csv_dir`, `self.curves_cache` and
    `self.current_run_folders`)."""

    def run_names(self) -> list[str]:
        return list(self.current_run_folders())

    def live_run(self) -> str | None:
        """The run this app is training now, if any: the curves zoom to it."""
        return self.jobs.run_dir.name if self.jobs.running() and self.jobs.run_dir else None

    def curves(self, selected: list[str] | None, x_axis: str = "step"):
        """(loss figure, perplexity figure, CSV path) for the selected runs, against the step or the epoch."""
        folders = self.current_run_folders()
        chosen = tuple(name for name in selected or [] if name in folders)
        key = (chosen, x_axis, self.live_run(), tuple(metrics_version(folders[name]) for name in chosen))

        def build():
            runs = {name: read_metrics(folders[name]) for name in chosen}
            return (*plots.curves(runs, x_axis, focus=key[2]), runs)

        return self.curves_cache.get(key, self.csv_dir, build)


def build(app, demo: gr.Blocks, tab: gr.Tab) -> dict:
    """Lay out the tab inside the open gr.Tab `tab`; returns the components the timer updates."""
    runs = app.run_names()
    with gr.Row():
        run_picker = gr.Dropdown(runs, value=runs, multiselect=True, label="Runs", scale=4, elem_id="run-picker")
        x_axis = gr.Radio(list(plots.X_AXES), value="step", label="x axis", scale=1,
                          info="epochs compare runs with different batch sizes")
    gr.Markdown("While a run trains, the plots zoom to it; double-click a plot to see every run in full.",
                elem_classes="mask-note")
    loss_plot = gr.Plot(show_label=False, elem_id="loss-plot")
    perplexity_plot = gr.Plot(show_label=False, elem_id="perplexity-plot")
    csv = gr.DownloadButton("Download the metrics (CSV)")
    # `.input`, not `.change`: the timer sets the picker's value too, and must not start a second, visible refresh.
    for trigger in (run_picker.input, x_axis.input, demo.load):
        trigger(app.curves, [run_picker, x_axis], [loss_plot, perplexity_plot, csv], api_visibility="private")
    tab.select(None, js=RESIZE_JS)
    return {"run_picker": run_picker, "x_axis": x_axis, "loss_plot": loss_plot, "perplexity_plot": perplexity_plot,
            "csv": csv}
