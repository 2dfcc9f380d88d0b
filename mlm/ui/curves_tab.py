"""The Curves tab: loss and perplexity of several runs overlaid, live while one trains, with a CSV download."""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

import gradio as gr

from mlm.runs.atomic import write_atomic
from mlm.runs.layout import METRICS_FILE
from mlm.runs.metrics import read_metrics
from mlm.serve.lru import LRU
from mlm.ui.common import on
from mlm.ui.jobs.jobs import TrainingJobs
from mlm.ui.plots import curves as plots

CACHED_VIEWS = 32  # (selection, x axis, focus, metrics versions) -> figures and CSV: one entry per kind of page
CSV_KEEP_S = 600  # a CSV nobody was sent for this long is deleted (a training run makes a new one per update)
METRIC_COLUMNS = ("run", "step", "epoch", "split", "loss", "perplexity", "top1", "top5", "lr", "tokens_per_s",
                  "elapsed_s")
# Plotly sizes a plot when it is drawn; one drawn while its tab was hidden stays narrow. A resize once the tab
# shows lets it fill its box again (plotly's responsive handler skips hidden plots).
RESIZE_JS = "() => { setTimeout(() => window.dispatchEvent(new Event('resize')), 100); }"


class View(NamedTuple):
    loss_plot: object
    perplexity_plot: object
    csv: str  # the CSV file's path


def metrics_version(folder: Path) -> tuple[int, int]:
    try:
        stat = (folder / METRICS_FILE).stat()
    except OSError:
        return 0, 0
    return stat.st_mtime_ns, stat.st_size


def write_metrics_csv(runs: dict[str, list[dict]], path: Path) -> Path:
    """Replaced in one rename (mlm.runs.atomic): a download in progress never reads half a file, and two requests
    writing the same path at once never take each other's partial file away. Rebuilt on demand, so not synced."""
    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for name, records in runs.items():
                for record in records:
                    writer.writerow({"run": name, **record})
    return write_atomic(path, write, durable=False)


class CurvesCache:
    """The last few views built, shared by every page: the timer's refresh on N pages builds the figures and
    writes the CSV once per change, not N times. The CSV's name comes from what it holds, so pages showing the
    same runs share one file and pages showing others never overwrite it."""

    def __init__(self, csv_dir: Path):
        self.csv_dir = csv_dir
        self.lock = threading.Lock()  # a CSV handed out is touched before any prune can see it
        self.views: LRU[tuple, View] = LRU(CACHED_VIEWS)

    def get(self, key: tuple, build) -> View:
        with self.lock:
            view = self.views.get(key)
            if view is not None and Path(view.csv).exists():
                os.utime(view.csv)  # in use: not pruned
                return view
        loss, perplexity, runs = build()
        path = self.csv_dir / f"metrics-{hashlib.sha1(repr(key[0::3]).encode()).hexdigest()[:16]}.csv"
        write_metrics_csv(runs, path)
        with self.lock:
            view = View(loss, perplexity, str(path))
            self.views.put(key, view)
            self.prune()
        return view

    def prune(self) -> None:
        """Delete the CSV files nobody was sent for CSV_KEEP_S (under the lock, so never one being handed out)."""
        cutoff = time.time() - CSV_KEEP_S
        for path in self.csv_dir.glob("metrics-*.csv"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass  # already gone


class CurvesTab:
    """Curves' handlers. `run_folders()` gives the runs with metrics (the app's shared snapshot of the folders);
    `jobs` tells which run trains now."""

    def __init__(self, jobs: TrainingJobs, run_folders: Callable[[], dict[str, Path]]):
        self.jobs, self.run_folders = jobs, run_folders
        self.cache = CurvesCache(Path(tempfile.mkdtemp(prefix="mlm-metrics-")))

    def run_names(self) -> list[str]:
        return list(self.run_folders())

    def live_run(self) -> str | None:
        """The run this app is training now, if any: the curves zoom to it."""
        return self.jobs.run_dir.name if self.jobs.running() and self.jobs.run_dir else None

    def curves(self, selected: list[str] | None, x_axis: str = "step") -> dict:
        """{"loss_plot", "perplexity_plot", "csv" path} for the selected runs, against the step or the epoch."""
        folders = self.run_folders()
        chosen = tuple(name for name in selected or [] if name in folders)
        key = (chosen, x_axis, self.live_run(), tuple(metrics_version(folders[name]) for name in chosen))

        def build():
            runs = {name: read_metrics(folders[name]) for name in chosen}
            return (*plots.curves(runs, x_axis, focus=key[2]), runs)

        return self.cache.get(key, build)._asdict()


def build(tab: CurvesTab, demo: gr.Blocks, page: gr.Tab) -> dict:
    """Lay out the tab inside the open gr.Tab `page`; returns the components the timer updates."""
    runs = tab.run_names()
    with gr.Row():
        run_picker = gr.Dropdown(runs, value=runs, multiselect=True, label="Runs", scale=4, elem_id="run-picker")
        x_axis = gr.Radio(list(plots.X_AXES), value="step", label="x axis", scale=1,
                          info="epochs compare runs with different batch sizes")
    gr.Markdown("While a run trains, the plots zoom to it; double-click a plot to see every run in full.",
                elem_classes="mask-note")
    shown = {"loss_plot": gr.Plot(show_label=False, elem_id="loss-plot"),
             "perplexity_plot": gr.Plot(show_label=False, elem_id="perplexity-plot"),
             "csv": gr.DownloadButton("Download the metrics (CSV)")}
    # `.input`, not `.change`: the timer sets the picker's value too, and must not start a second, visible refresh.
    for trigger in (run_picker.input, x_axis.input, demo.load):
        on(trigger, tab.curves, [run_picker, x_axis], shown, api_visibility="private")
    page.select(None, js=RESIZE_JS)
    return {"run_picker": run_picker, "x_axis": x_axis, **shown}
