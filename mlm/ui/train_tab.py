"""The Train tab: a form that starts `python -m mlm.train` in its own process, a status panel, Stop."""

from __future__ import annotations

import gradio as gr

from mlm.config import PRESETS
from mlm.hub import UserError, hub_reachable
from mlm.runs import PROJECT_DIR, RunStatus, TrainRequest
from mlm.ui.common import duration, escape, number, optional, training_allowed

LESSON_MINUTES = 5.0  # "Train for 5 minutes": a --time-budget run that fits a lesson
APP_SNAPSHOTS = 6  # every run started here keeps snapshots for the Time-lapse tab
DEFAULT_DATA_DIR = PROJECT_DIR.parent / "shared" / "data" / "wikitext-2-v1"
SOURCE_LABELS = {"hub": "WikiText-2 from the Hugging Face hub", "folder": "A local WikiText folder",
                 "file": "A text file I upload"}


def status_markdown(status: RunStatus) -> str:
    if status.run_dir is None:
        return escape(status.message)
    total = number(status.total_steps, "{:,}")
    return (f"**{escape(status.run_dir.name)}**: {status.state}. {escape(status.message)}\n\n"
            f"| step | epoch | loss | valid loss | tokens/s | elapsed | ETA |\n|---|---|---|---|---|---|---|\n"
            f"| {status.step:,} / {total} | {number(status.epoch, '{:.2f}')} | {number(status.loss)} | "
            f"{number(status.valid_loss)} | {number(status.tokens_per_s, '{:,.0f}')} | {duration(status.elapsed_s)} | "
            f"{duration(status.eta_s)} |")


def preset_defaults(preset: str) -> tuple[float, int]:
    """The learning rate and batch size a preset would use, to start the form from."""
    return PRESETS[preset]["lr"], PRESETS[preset]["batch_size"]


class TrainHandlers:
    """Train's handlers, mixed into DemoApp (needs `self.jobs`)."""

    def start_training(self, preset: str, source: str, data_dir: str, upload: str | None, epochs, lr, batch_size,
                       max_train_blocks, max_minutes, five_minutes: bool = False) -> str:
        if not training_allowed():
            return "Training is off on this public Space. The operator can enable it with `MLM_ALLOW_TRAINING=1`."
        try:
            request = TrainRequest(
                preset=preset, data_source=source, data_dir=(data_dir or "").strip(), text_file=upload or "",
                epochs=optional(epochs, float), lr=optional(lr, float), batch_size=optional(batch_size, int),
                max_train_blocks=optional(max_train_blocks, int), max_minutes=optional(max_minutes, float),
                time_budget=LESSON_MINUTES if five_minutes else None, snapshots=APP_SNAPSHOTS,
            )
            run_dir = self.jobs.start(request)
        except UserError as error:
            return f"⚠️ {escape(error)}"
        return f"Started **{escape(run_dir.name)}**: loading data and building the model…"

    def stop_training(self) -> str:
        return escape(self.jobs.stop())

    def training_status(self) -> str:
        return status_markdown(self.jobs.status())


def build(app) -> dict:
    """Lay out the tab inside an open gr.Tab; returns the components the timer updates."""
    allowed = training_allowed()
    if not allowed:
        gr.Markdown("**Training is off on this public Space**, so that visitors cannot tie up its CPU. The "
                    "Space's operator can turn it on by setting the variable `MLM_ALLOW_TRAINING=1` in the "
                    "Space settings (or run the app on their own machine, where it is on).")
    sources = [key for key in SOURCE_LABELS if key != "hub" or hub_reachable()]
    with gr.Row():
        with gr.Column():
            preset = gr.Dropdown(list(PRESETS), value="scratch", label="Preset", interactive=allowed)
            source = gr.Radio([(SOURCE_LABELS[key], key) for key in sources], label="Data",
                              value="hub" if "hub" in sources else "folder", interactive=allowed)
            data_dir = gr.Textbox(str(DEFAULT_DATA_DIR) if DEFAULT_DATA_DIR.is_dir() else "",
                                  label="Local WikiText folder", interactive=allowed)
            upload = gr.File(label="Text file (plain text, one paragraph per line)", file_types=[".txt"],
                             type="filepath", interactive=allowed)
        with gr.Column():
            epochs = gr.Number(1, label="Epochs", minimum=0.01, interactive=allowed)
            lr = gr.Number(PRESETS["scratch"]["lr"], label="Learning rate", minimum=0, interactive=allowed)
            batch_size = gr.Number(PRESETS["scratch"]["batch_size"], label="Batch size", precision=0,
                                   minimum=1, interactive=allowed)
            max_blocks = gr.Number(2000, label="Cap: training blocks of 128 tokens (empty: all)", precision=0,
                                   minimum=1, interactive=allowed)
            max_minutes = gr.Number(5, label="Cap: minutes (then it stops with a resumable checkpoint)",
                                    minimum=0.1, interactive=allowed)
            five_minutes = gr.Checkbox(False, label=f"Train for {LESSON_MINUTES:g} minutes",  # mlm/schedule.py
                                       info="the learning rate warms up and decays to 0 over the minutes from Start",
                                       interactive=allowed, elem_id="train-five-minutes")
    with gr.Row():
        start = gr.Button("Start training", variant="primary", interactive=allowed and not app.jobs.running())
        stop = gr.Button("Stop", interactive=allowed)
    status = gr.Markdown(app.training_status())
    preset.change(preset_defaults, preset, [lr, batch_size], api_visibility="private")
    start.click(app.start_training, [preset, source, data_dir, upload, epochs, lr, batch_size, max_blocks,
                                     max_minutes, five_minutes], status, api_visibility="private")
    stop.click(app.stop_training, None, status, api_visibility="private")
    return {"status": status, "start": start}
