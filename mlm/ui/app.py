"""The whole page: `DemoApp` (the shared state and one handler object per tab) and `build_demo` (tabs, timer, API).

Each tab is a module of its own (mlm/ui/*_tab.py) with a handler class and a `build` function that lays it out;
this module composes them, giving each handler object what it uses. Handlers are plain methods that return their
outputs by name ({name: value}, see mlm.ui.common.on), so tests call them directly. User text is only ever shown
through components that display text as text (Textbox, HighlightedText, Dataframe); Markdown gets nothing from the
user that is not HTML-escaped first.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr

from mlm.runs.layout import METRICS_FILE
from mlm.serve.answers import Predictor
from mlm.serve.explain import Explainer
from mlm.serve.registry import ModelRegistry
from mlm.serve.timelapse import SnapshotModels
from mlm.ui import compare_tab, curves_tab, explain_tab, timelapse_tab, train_tab
from mlm.ui.common import on, training_allowed
from mlm.ui.jobs.jobs import PROJECT_DIR, TrainingJobs

TICK_SECONDS = 2.0
SNAPSHOT_SECONDS = 1.0  # however many pages tick, the server looks at the disk at most once a second
# Compare's and Explain's left and right model pickers: all offer the same models
MODEL_PICKERS = ("compare_left", "compare_right", "explain_left", "explain_right")
# What the timer refreshes, by name; `tick` answers for every one of them (gr.skip() where nothing changed).
TICK_OUTPUTS = ("status", "start", "loss_plot", "perplexity_plot", "csv", "run_picker", *MODEL_PICKERS,
                "timelapse_run", "last_seen")


class DemoApp:
    """The app's state (one model registry, one training-job slot, the snapshot every page's timer compares with)
    and the tabs' handler objects: `compare`, `train`, `curves`, `explain`, `timelapse`."""

    def __init__(self, checkpoints_dir: str | Path = PROJECT_DIR / "checkpoints", torchscript: bool = True):
        self.checkpoints_dir = Path(checkpoints_dir)
        self.registry = ModelRegistry(self.checkpoints_dir)
        self.predictor = Predictor(self.registry, torchscript=torchscript)  # traced encoders: see Predictor
        self.snapshot_models = SnapshotModels(self.predictor)
        self.explainer = Explainer(self.registry)
        self.jobs = TrainingJobs(self.checkpoints_dir)
        self.compare = compare_tab.CompareTab(self.registry, self.predictor)
        self.train = train_tab.TrainTab(self.jobs)
        self.curves = curves_tab.CurvesTab(self.jobs, self.current_run_folders)
        self.explain = explain_tab.ExplainTab(self.explainer)
        self.timelapse = timelapse_tab.TimelapseTab(self.registry, self.snapshot_models)
        self._snapshot_lock = threading.Lock()
        self._snapshot: tuple[float, tuple, dict] | None = None  # (when, snapshot, run folders)

    # ------------------------------------------------------------------------------------------------------------
    # The timer: everything that changes while a run trains

    def snapshot(self) -> tuple:
        """Changes whenever the status, the curves or the offered models would: lets a tick skip idle refreshes.
        Shared by every page and recomputed at most once per SNAPSHOT_SECONDS, so a class of pages polling costs
        the server one look at the disk a second, not one per page."""
        return self._fresh_snapshot()[1]

    def current_run_folders(self) -> dict[str, Path]:
        """`registry.run_folders()`, from the shared snapshot when it is fresh."""
        return self._fresh_snapshot()[2]

    def _fresh_snapshot(self) -> tuple[float, tuple, dict]:
        with self._snapshot_lock:
            if self._snapshot is None or time.monotonic() - self._snapshot[0] >= SNAPSHOT_SECONDS:
                entries = self.registry.entries()  # one look at the folders, for the curves and every picker
                folders = self.registry.run_folders(entries)
                metrics = tuple((name, (folder / METRICS_FILE).stat().st_mtime_ns) for name, folder in folders.items())
                now = (self.train.training_status(), metrics, tuple(entries), self.curves.live_run(),
                       tuple(self.snapshot_models.runs(entries)))
                self._snapshot = (time.monotonic(), now, folders)
            return self._snapshot

    def tick(self, selected: list[str] | None, x_axis: str, timelapse_run: str | None, last: tuple) -> dict:
        """{name: update} for every one of TICK_OUTPUTS: what changed since this page's last snapshot (status,
        curves, pickers), and gr.skip() for the rest: an update to a dropdown would close it under a student's
        cursor."""
        now = self.snapshot()
        shown = dict.fromkeys(TICK_OUTPUTS, gr.skip()) | {"last_seen": now}
        if now == last:
            return shown
        status, metrics, names, live, timelapse = now
        last_status, last_metrics, last_names, last_live, last_timelapse = last
        if metrics != last_metrics or live != last_live:
            runs, seen = [name for name, _ in metrics], dict(last_metrics)
            selected = list(dict.fromkeys((selected or []) + [r for r in runs if r not in seen]))  # plot new runs
            shown |= self.curves.curves(selected, x_axis) | {"run_picker": gr.update(choices=runs, value=selected)}
        if names != last_names:
            shown |= dict.fromkeys(MODEL_PICKERS, gr.update(choices=list(names)))
        if timelapse != last_timelapse:  # a run with snapshots landed: offered, and shown if none was
            value = timelapse_run if timelapse_run in timelapse else (timelapse[0] if timelapse else None)
            shown["timelapse_run"] = gr.update(choices=list(timelapse), value=value)
        if status != last_status:
            shown |= {"status": status, "start": gr.update(interactive=training_allowed() and not self.jobs.running())}
        return shown


def build_demo(app: DemoApp) -> gr.Blocks:
    with gr.Blocks(title="Masked language models: compare, train, plot") as demo:
        gr.Markdown("# Masked language models\nType a sentence with `[MASK]` where a word is missing and compare "
                    "what two BERT models guess.")
        with gr.Tab("Compare"):
            compare = compare_tab.build(app.compare, demo)
        with gr.Tab("Train"):
            train = train_tab.build(app.train)
        with gr.Tab("Curves") as curves_page:
            curves = curves_tab.build(app.curves, demo, curves_page)
        with gr.Tab("Explain") as explain_page:
            explain = explain_tab.build(app.explain, explain_page, app.registry.names(),
                                        dict(zip(("left", "right"), compare_tab.default_models(app.registry))))
        with gr.Tab("Time-lapse"):
            timelapse = timelapse_tab.build(app.timelapse, demo)

        if training_allowed():  # the Train tab's estimate for the form as it opens
            demo.load(app.train.describe_preset, train["form"], train["about"], api_visibility="private",
                      concurrency_id="estimate", concurrency_limit=1, show_progress="hidden")
        last_seen = gr.State(app.snapshot())  # what a new page shows: the timer sends only what changes after
        named = {"status": train["status"], "start": train["start"], "compare_left": compare["left"],
                 "compare_right": compare["right"], "explain_left": explain["left"], "explain_right": explain["right"],
                 "timelapse_run": timelapse["run"], "last_seen": last_seen, **curves}
        refreshed = {name: named[name] for name in TICK_OUTPUTS}  # every output tick answers for, by its name
        # Silent (no progress overlay on any output), and in its own small group: ticks are cheap (see snapshot)
        # and never wait behind, nor hold up, a prediction.
        on(gr.Timer(TICK_SECONDS).tick, app.tick,
           [curves["run_picker"], curves["x_axis"], timelapse["run"], last_seen], refreshed,
           api_visibility="private", concurrency_id="status", concurrency_limit=2, show_progress="hidden")

        gr.api(app.predictor.fill_mask, api_name="fill_mask", concurrency_id="fill_mask")
        gr.api(app.registry.names, api_name="list_models", concurrency_limit=None)
        for name in ("score_candidates", "layer_guesses", "attention", "score_sentence", "training_view"):
            gr.api(getattr(app.explainer, name), api_name=name, concurrency_id="inference")
        gr.api(app.snapshot_models.list_snapshots, api_name="list_snapshots", concurrency_limit=None)
        gr.api(app.snapshot_models.fill_mask_at, api_name="fill_mask_at", concurrency_id="inference")
        gr.api(app.snapshot_models.candidate_history, api_name="candidate_history", concurrency_id="inference")
    return demo
