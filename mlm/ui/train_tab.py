"""The Train tab: a form that starts `python -m mlm.train` in its own process, a status panel, Stop and Resume."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import gradio as gr

from mlm.config import PRESETS
from mlm.ui.jobs.estimate import estimate
from mlm.hub import hub_reachable
from mlm.errors import UserError
from mlm.ui.jobs.limits import max_upload_bytes
from mlm.ui.jobs.status import RunStatus
from mlm.ui.jobs.jobs import PROJECT_DIR, TrainingJobs
from mlm.ui.jobs.request import TrainRequest
from mlm.ui.common import duration, escape, number, on, optional, training_allowed

LESSON_MINUTES = 5.0  # "Train for 5 minutes": a --time-budget run that fits a lesson
APP_SNAPSHOTS = 6  # every run started here keeps snapshots for the Time-lapse tab
DEFAULT_DATA_DIR = PROJECT_DIR.parent / "shared" / "data" / "wikitext-2-v1"
SOURCE_LABELS = {"hub": "WikiText-2 from the Hugging Face hub", "folder": "A local WikiText folder",
                 "file": "A text file I upload"}
PRESET_TEXT = {
    "scratch": "The original recipe: a small 3-layer BERT learns English from nothing (batch 8, lr 5e-4).",
    "finetune": "Fine-tunes a pretrained BERT (offline: MiniLM) on the text: good guesses after little training.",
    "fast": "The best from-scratch recipe found (batch 128, lr 2e-3, 30% masks, 10 epochs, mimetic init): for a GPU.",
    "budget": "Five minutes of a CPU from Start, the learning rate decaying to 0 by then (batch 16, lr 1e-3, mimetic init).",
}
CAP_HELP = ("Cap: minutes from Start (loading data, validations and training all count; then it stops with a "
            "resumable checkpoint)")


def upload_limit() -> int:
    """The largest upload the server accepts (Gradio's max_file_size): none at all where training is off."""
    return max_upload_bytes() if training_allowed() else 0


def status_markdown(status: RunStatus, note: str = "") -> str:
    lead = f"{escape(note)}\n\n" if note else ""
    if status.run_dir is None:
        return lead + escape(status.message)
    total = number(status.total_steps, "{:,}")
    label = status.phase if status.active else status.state
    eta = duration(status.eta_s) + (" (minutes cap)" if status.eta_capped else "")
    return (f"{lead}**{escape(status.run_dir.name)}**: {label}. {escape(status.message)}\n\n"
            f"| step | epoch | loss | valid loss | tokens/s | since Start | ETA (validations included) |\n"
            f"|---|---|---|---|---|---|---|\n"
            f"| {status.step:,} / {total} | {number(status.epoch, '{:.2f}')} | {number(status.loss)} | "
            f"{number(status.valid_loss)} | {number(status.tokens_per_s, '{:,.0f}')} | {duration(status.elapsed_s)} | "
            f"{eta if status.active else '–'} |")


def preset_defaults(preset: str) -> dict:
    """The learning rate and batch size a preset would use, to start the form from."""
    return {"lr": PRESETS[preset]["lr"], "batch_size": PRESETS[preset]["batch_size"]}


def source_visibility(source: str) -> dict:
    """The folder box only for a local folder, the upload box only for an upload."""
    return {"data_dir": gr.update(visible=source == "folder"), "upload": gr.update(visible=source == "file")}


def gradio_upload(path: str | None) -> bool:
    """Whether `path` is a file Gradio received (in its upload folder), which is ours to delete once copied."""
    folder = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    return bool(path) and folder in Path(path).resolve().parents


class TrainTab:
    """Train's handlers, on the app's one training-job slot."""

    def __init__(self, jobs: TrainingJobs):
        self.jobs = jobs

    def training_request(self, preset, source, data_dir, upload, epochs, lr, batch_size, max_train_blocks,
                         max_minutes, max_eval_blocks=None, name="") -> TrainRequest:
        return TrainRequest(
            preset=preset, data_source=source, data_dir=(data_dir or "").strip(), text_file=upload or "",
            epochs=optional(epochs, float), lr=optional(lr, float), batch_size=optional(batch_size, int),
            max_train_blocks=optional(max_train_blocks, int), max_minutes=optional(max_minutes, float),
            max_eval_blocks=optional(max_eval_blocks, int), name=(name or "").strip(),
        )

    def start_training(self, preset: str, source: str, data_dir: str, upload: str | None, epochs, lr, batch_size,
                       max_train_blocks, max_minutes, max_eval_blocks=None, name: str = "",
                       five_minutes: bool = False) -> str:
        if not training_allowed():
            return "Training is off on this public Space. The operator can enable it with `MLM_ALLOW_TRAINING=1`."
        try:
            request = self.training_request(preset, source, data_dir, upload, epochs, lr, batch_size,
                                            max_train_blocks, max_minutes, max_eval_blocks, name)
            # every run started here keeps snapshots; "Train for 5 minutes" is a --time-budget run
            request = dataclasses.replace(request, snapshots=APP_SNAPSHOTS,
                                          time_budget=LESSON_MINUTES if five_minutes else None)
            self.jobs.start(request)
        except UserError as error:
            return f"⚠️ {escape(error)}"
        if source == "file" and gradio_upload(upload):
            Path(upload).unlink(missing_ok=True)  # the run keeps its own copy, removed when no longer needed
        return status_markdown(self.jobs.status(), "Started.")

    def resume_training(self, max_minutes) -> str:
        """Continue the run this tab last showed, if it stopped with a resumable checkpoint."""
        if not training_allowed():
            return "Training is off on this public Space."
        status = self.jobs.status()
        if status.active:
            return status_markdown(status, "A run is going: stop it first, or wait until it finishes.")
        if not status.resumable:
            return status_markdown(status, "Nothing to resume: no stopped run with a checkpoint here.")
        try:
            self.jobs.resume(status.run_dir, optional(max_minutes, float))
        except UserError as error:
            return f"⚠️ {escape(error)}"
        return status_markdown(self.jobs.status(), "Resumed.")

    def stop_training(self) -> str:
        """Stop the run; with none going, the last run's outcome stays on screen."""
        note = self.jobs.stop()  # first: the status then reads "stopping"
        return status_markdown(self.jobs.status(), note)

    def training_status(self) -> str:
        return status_markdown(self.jobs.status())

    def describe_preset(self, preset, source, data_dir, upload, epochs, lr, batch_size, max_train_blocks,
                        max_minutes, max_eval_blocks=None) -> str:
        """The preset in one line, and how long the form's run would take here (the speed measured once)."""
        try:
            request = self.training_request(preset, source, data_dir, upload, epochs, lr, batch_size,
                                            max_train_blocks, max_minutes, max_eval_blocks)
            guess = estimate(request)
        except UserError as error:
            return f"{PRESET_TEXT.get(preset, '')} ⚠️ {escape(error)}"
        cap = (f" The {guess.capped_by_minutes:g}-minute cap stops it before the end." if guess.capped_by_minutes
               else "")
        return (f"{PRESET_TEXT[preset]}\n\nOn this machine: about **{duration(guess.seconds)}** ({guess.steps:,} "
                f"steps of {guess.step_s:.2f} s and {guess.evaluations} validations of {duration(guess.evaluation_s)}, "
                f"measured here; start-up and a busier machine add to it).{cap}")


def build(tab: TrainTab) -> dict:
    """Lay out the tab inside an open gr.Tab; returns the components the timer updates."""
    allowed = training_allowed()
    if not allowed:
        gr.Markdown("**Training is off on this public Space**, so that visitors cannot tie up its CPU. The "
                    "Space's operator can turn it on by setting the variable `MLM_ALLOW_TRAINING=1` in the "
                    "Space settings (or run the app on their own machine, where it is on).")
    sources = [key for key in SOURCE_LABELS if key != "hub" or hub_reachable()]
    first_source = "hub" if "hub" in sources else "folder"
    with gr.Row():
        with gr.Column():
            preset = gr.Dropdown(list(PRESETS), value="scratch", label="Preset", interactive=allowed)
            about = gr.Markdown(PRESET_TEXT["scratch"] + "\n\nOn this machine: estimating…", elem_id="preset-about")
            name = gr.Textbox(label="Run name (optional; letters, digits, . - _)", placeholder="e.g. my-first-bert",
                              max_length=64, interactive=allowed)
            source = gr.Radio([(SOURCE_LABELS[key], key) for key in sources], label="Data", value=first_source,
                              interactive=allowed)
            data_dir = gr.Textbox(str(DEFAULT_DATA_DIR) if DEFAULT_DATA_DIR.is_dir() else "",
                                  label="Local WikiText folder", interactive=allowed, visible=first_source == "folder",
                                  elem_id="train-folder")
            upload = gr.File(label=f"Text file (UTF-8 plain text, one paragraph per line, up to "
                                   f"{max_upload_bytes() / 1e6:g} MB)", file_types=[".txt"], type="filepath",
                             interactive=allowed, visible=False, elem_id="train-upload")
        with gr.Column():
            epochs = gr.Number(1, label="Epochs", minimum=0.01, interactive=allowed)
            lr = gr.Number(PRESETS["scratch"]["lr"], label="Learning rate", minimum=0, interactive=allowed)
            batch_size = gr.Number(PRESETS["scratch"]["batch_size"], label="Batch size", precision=0,
                                   minimum=1, interactive=allowed)
            max_blocks = gr.Number(2000, label="Cap: training blocks of 128 tokens (empty: all)", precision=0,
                                   minimum=1, interactive=allowed)
            max_minutes = gr.Number(5, label=CAP_HELP, minimum=0.1, interactive=allowed)
            max_eval_blocks = gr.Number(400, label="Cap: validation blocks (empty: all; fewer validate faster)",
                                        precision=0, minimum=1, interactive=allowed)
            five_minutes = gr.Checkbox(False, label=f"Train for {LESSON_MINUTES:g} minutes",  # mlm/train/schedule.py
                                       info="the learning rate warms up and decays to 0 over the minutes from Start",
                                       interactive=allowed, elem_id="train-five-minutes")
    with gr.Row():
        start = gr.Button("Start training", variant="primary", interactive=allowed and not tab.jobs.running())
        stop = gr.Button("Stop", interactive=allowed)
        resume = gr.Button("Resume the stopped run", interactive=allowed)
    status = gr.Markdown(tab.training_status(), elem_id="train-status")
    form = [preset, source, data_dir, upload, epochs, lr, batch_size, max_blocks, max_minutes, max_eval_blocks]
    on(preset.change, preset_defaults, preset, {"lr": lr, "batch_size": batch_size}, api_visibility="private")
    on(source.change, source_visibility, source, {"data_dir": data_dir, "upload": upload}, api_visibility="private")
    if allowed:  # the estimate trains a few steps: not for visitors of a Space where training is off
        gr.on([preset.change, source.change, upload.change, epochs.change, batch_size.change, max_blocks.change,
               max_minutes.change, max_eval_blocks.change], tab.describe_preset, form, about, api_visibility="private",
              concurrency_id="estimate", concurrency_limit=1, trigger_mode="always_last", show_progress="hidden")
    start.click(tab.start_training, [*form, name, five_minutes], status, api_visibility="private")
    stop.click(tab.stop_training, None, status, api_visibility="private")
    resume.click(tab.resume_training, max_minutes, status, api_visibility="private")
    return {"status": status, "start": start, "about": about, "form": form}
