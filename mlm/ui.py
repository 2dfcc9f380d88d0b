"""The Gradio app: Compare (what students see), Train (what a teacher runs) and Curves.

`DemoApp` holds the handlers as plain methods over the model registry (mlm.predict) and the training jobs
(mlm.runs), so tests call them directly; `build_demo` only lays out components and wires events to them.
User text is only ever shown through components that display text as text (Textbox, HighlightedText, Dataframe);
Markdown gets nothing from the user that is not HTML-escaped first.
"""

from __future__ import annotations

import hashlib
import html
import os
import tempfile
from pathlib import Path

import gradio as gr

from mlm import plots
from mlm.checkpoint import METRICS_FILE, read_metrics
from mlm.config import PRESETS
from mlm.hub import UserError, hub_reachable
from mlm.predict import MASK, MAX_MASKS, MAX_TOP_K, ModelRegistry
from mlm.runs import PROJECT_DIR, RunStatus, TrainingJobs, TrainRequest

TICK_SECONDS = 2.0
DEFAULT_DATA_DIR = PROJECT_DIR.parent / "shared" / "data" / "wikitext-2-v1"
SOURCE_LABELS = {"hub": "WikiText-2 from the Hugging Face hub", "folder": "A local WikiText folder",
                 "file": "A text file I upload"}
EXAMPLES = [
    ["The capital of France is [MASK].", 5],
    ["Paris is the [MASK] of France.", 5],
    ["The keys to the cabinet [MASK] on the table.", 5],
    ["She [MASK] to school every morning.", 5],
    ["The team [MASK] won the championship last year.", 5],
    ["The album was released in [MASK] and reached number one on the charts.", 5],
    ["During the war , the [MASK] was used as a hospital .", 5],
    ["The [MASK] of the river is in the [MASK] mountains.", 5],
    ["I put the [MASK] in the fridge and closed the [MASK].", 5],
]
CSS = ".mask-note {opacity: 0.8; font-size: 0.9em}"


def training_allowed() -> bool:
    """On a Hugging Face Space (SPACE_ID is set) anyone could burn the machine: there, the operator opts in."""
    return not os.environ.get("SPACE_ID") or os.environ.get("MLM_ALLOW_TRAINING", "") == "1"


def escape(text) -> str:
    return html.escape(str(text))


def number(value, pattern: str = "{:,.3f}") -> str:
    return "–" if value is None else pattern.format(value)


def optional(value, kind):
    """A form field as `kind`, or None where it was left empty (the preset's value applies)."""
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError) as error:
        raise UserError(f"'{value}' is not a number") from error


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def card_markdown(card: dict) -> str:
    parameters = f"{card['parameters'] / 1e6:.1f} M parameters" if card["parameters"] else "parameters: n/a"
    quality = (f"validation loss **{card['valid_loss']:.3f}**, perplexity **{card['perplexity']:,.1f}**"
               if card["valid_loss"] is not None else "no validation metrics")
    return (f"**{escape(card['name'])}** — {escape(card['description'])}  \n"
            f"{parameters} · trained on {escape(card['training_data'])} · {quality}")


def column(answer: dict) -> tuple:
    """One model's answer as the Compare tab shows it: (filled sentence, tokens, chart, table)."""
    if "error" in answer:
        return f"⚠️ {answer['error']}", [], plots.guesses_chart(answer), None
    masked = {mask["index"] for mask in answer["masks"]}
    tokens = []
    for index, token in enumerate(answer["tokens"]):
        kind = "[MASK]" if index in masked else "## piece" if token.startswith("##") else None
        tokens += [(token, kind), (" ", None)]  # spaces between the spans show where each token ends
    table = [[mask_number, candidate["token"], float(f"{candidate['score']:.4g}")]
             for mask_number, mask in enumerate(answer["masks"], start=1) for candidate in mask["candidates"]]
    return answer["filled"], tokens, plots.guesses_chart(answer), table


def status_markdown(status: RunStatus) -> str:
    if status.run_dir is None:
        return escape(status.message)
    total = number(status.total_steps, "{:,}")
    return (f"**{escape(status.run_dir.name)}**: {status.state}. {escape(status.message)}\n\n"
            f"| step | epoch | loss | valid loss | tokens/s | elapsed | ETA |\n|---|---|---|---|---|---|---|\n"
            f"| {status.step:,} / {total} | {number(status.epoch, '{:.2f}')} | {number(status.loss)} | "
            f"{number(status.valid_loss)} | {number(status.tokens_per_s, '{:,.0f}')} | {duration(status.elapsed_s)} | "
            f"{duration(status.eta_s)} |")


class DemoApp:
    """The app's state and handlers: one model registry, one training-job slot."""

    def __init__(self, checkpoints_dir: str | Path = PROJECT_DIR / "checkpoints"):
        self.checkpoints_dir = Path(checkpoints_dir)
        self.registry = ModelRegistry(self.checkpoints_dir)
        self.jobs = TrainingJobs(self.checkpoints_dir)
        self.csv_dir = Path(tempfile.mkdtemp(prefix="mlm-metrics-"))

    # ------------------------------------------------------------------------------------------------------------
    # Compare

    def default_models(self) -> tuple[str | None, str | None]:
        """The shipped from-scratch and fine-tuned models: the first two entries of models.json that exist."""
        names = self.registry.names()
        return (names[0] if names else None), (names[1] if len(names) > 1 else names[0] if names else None)

    def warm_up(self) -> None:
        """Load the default models before the first student asks (a broken one just shows its error later)."""
        for name in dict.fromkeys(filter(None, self.default_models())):
            self.registry.answer(name, MASK, 1)

    def card(self, name: str | None) -> str:
        if not name:
            return "No model available: train one in the Train tab, or add checkpoints (see README)."
        try:
            return card_markdown(self.registry.card(name))
        except UserError as error:
            return f"⚠️ {escape(error)}"

    def compare(self, text: str, top_k, left: str | None, right: str | None) -> list:
        """Outputs of both columns: (filled sentence, tokens, chart, table) for the left, then the right."""
        answers = self.registry.fill_mask(text, top_k, left or "", right or "")
        return [*column(answers["left"]), *column(answers["right"])]

    # ------------------------------------------------------------------------------------------------------------
    # Train

    def start_training(self, preset: str, source: str, data_dir: str, upload: str | None, epochs, lr, batch_size,
                       max_train_blocks, max_minutes) -> str:
        if not training_allowed():
            return "Training is off on this public Space. The operator can enable it with `MLM_ALLOW_TRAINING=1`."
        try:
            request = TrainRequest(
                preset=preset, data_source=source, data_dir=(data_dir or "").strip(), text_file=upload or "",
                epochs=optional(epochs, float), lr=optional(lr, float), batch_size=optional(batch_size, int),
                max_train_blocks=optional(max_train_blocks, int), max_minutes=optional(max_minutes, float),
            )
            run_dir = self.jobs.start(request)
        except UserError as error:
            return f"⚠️ {escape(error)}"
        return f"Started **{escape(run_dir.name)}**: loading data and building the model…"

    def stop_training(self) -> str:
        return escape(self.jobs.stop())

    def training_status(self) -> str:
        return status_markdown(self.jobs.status())

    # ------------------------------------------------------------------------------------------------------------
    # Curves

    def run_names(self) -> list[str]:
        return list(self.registry.run_folders())

    def curves(self, selected: list[str] | None, x_axis: str = "step"):
        """(loss figure, perplexity figure, CSV path) for the selected runs, against the step or the epoch."""
        folders = self.registry.run_folders()
        runs = {name: read_metrics(folders[name]) for name in selected or [] if name in folders}
        loss, perplexity = plots.curves(runs, x_axis)
        # One file per selection: pages showing other runs never overwrite each other's download.
        selection = hashlib.sha1("\n".join(runs).encode()).hexdigest()[:12]
        return loss, perplexity, str(plots.write_metrics_csv(runs, self.csv_dir / f"metrics-{selection}.csv"))

    # ------------------------------------------------------------------------------------------------------------
    # The timer: everything that changes while a run trains

    def snapshot(self) -> tuple:
        """Changes whenever the status, the curves or the offered models would: lets a tick skip idle refreshes."""
        folders = self.registry.run_folders()
        metrics = tuple((name, (folder / METRICS_FILE).stat().st_mtime_ns) for name, folder in folders.items())
        return self.training_status(), metrics, tuple(self.registry.names())

    def tick(self, selected: list[str] | None, x_axis: str, last: tuple):
        """Refresh what changed since this page's last snapshot (status, curves, pickers), and nothing else: an
        update to a dropdown would close it under a student's cursor."""
        now = self.snapshot()
        if now == last:
            return (gr.skip(),) * 8 + (last,)
        (status, metrics, names), (last_status, last_metrics, last_names) = now, last
        if metrics != last_metrics:
            runs, seen = [name for name, _ in metrics], dict(last_metrics)
            selected = list(dict.fromkeys((selected or []) + [r for r in runs if r not in seen]))  # plot new runs
            curves = (*self.curves(selected, x_axis), gr.update(choices=runs, value=selected))
        else:
            curves = (gr.skip(),) * 4
        pickers = gr.update(choices=list(names)) if names != last_names else gr.skip()
        if status != last_status:
            status_outputs = (status, gr.update(interactive=training_allowed() and not self.jobs.running()))
        else:
            status_outputs = (gr.skip(), gr.skip())
        return (status_outputs[0], *curves, pickers, pickers, status_outputs[1], now)


def preset_defaults(preset: str) -> tuple[float, int]:
    """The learning rate and batch size a preset would use, to start the form from."""
    return PRESETS[preset]["lr"], PRESETS[preset]["batch_size"]


# ----------------------------------------------------------------------------------------------------------------
# Layout


def build_demo(app: DemoApp) -> gr.Blocks:
    left_default, right_default = app.default_models()
    models = app.registry.names()
    with gr.Blocks(title="Masked language models: compare, train, plot") as demo:
        gr.Markdown("# Masked language models\nType a sentence with `[MASK]` where a word is missing and compare "
                    "what two BERT models guess.")
        with gr.Tab("Compare"):
            with gr.Row():
                text = gr.Textbox(EXAMPLES[0][0], label="Sentence", lines=2, scale=4, max_length=5000)
                with gr.Column(scale=1, min_width=160):
                    top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="Top-k guesses")
                    submit = gr.Button("Predict", variant="primary")
            gr.Markdown(f"Use `[MASK]` (or `[mask]`, `<mask>`), up to {MAX_MASKS} per sentence. Several masks are "
                        "predicted **independently**: each guess ignores what the model guesses for the other masks.",
                        elem_classes="mask-note")
            columns = []
            with gr.Row(equal_height=False):
                for side, default in (("Left", left_default), ("Right", right_default)):
                    with gr.Column():
                        picker = gr.Dropdown(models, value=default, label=f"{side} model", elem_id=f"{side.lower()}-model")
                        card = gr.Markdown(app.card(default))
                        filled = gr.Textbox(label="Filled with the top guess", interactive=False,
                                            elem_id=f"{side.lower()}-filled")
                        tokens = gr.HighlightedText(label="WordPiece tokens (## continues a word)", show_legend=True,
                                                    show_inline_category=False,
                                                    color_map={"[MASK]": "orange", "## piece": "lightblue"})
                        chart = gr.Plot(label="Top-k probabilities", elem_id=f"{side.lower()}-chart")
                        table = gr.Dataframe(headers=["mask", "token", "probability"], label="Top-k table",
                                             datatype=["number", "str", "number"], interactive=False,
                                             elem_id=f"{side.lower()}-table")
                        picker.change(app.card, picker, card, api_visibility="private")
                        columns.append((picker, [filled, tokens, chart, table]))
            (left, left_outputs), (right, right_outputs) = columns
            gr.Examples(EXAMPLES, inputs=[text, top_k], label="Examples: facts, grammar agreement, WikiText-style, several masks")
            # The page opens with the first example answered, so students see what to expect.
            for trigger in (submit.click, text.submit, demo.load):
                trigger(app.compare, [text, top_k, left, right], left_outputs + right_outputs,
                        api_visibility="private", concurrency_id="inference")

        with gr.Tab("Train"):
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
            with gr.Row():
                start = gr.Button("Start training", variant="primary", interactive=allowed and not app.jobs.running())
                stop = gr.Button("Stop", interactive=allowed)
            status = gr.Markdown(app.training_status())
            preset.change(preset_defaults, preset, [lr, batch_size], api_visibility="private")
            start.click(app.start_training, [preset, source, data_dir, upload, epochs, lr, batch_size, max_blocks,
                                             max_minutes], status, api_visibility="private")
            stop.click(app.stop_training, None, status, api_visibility="private")

        with gr.Tab("Curves"):
            runs = app.run_names()
            with gr.Row():
                run_picker = gr.Dropdown(runs, value=runs, multiselect=True, label="Runs", scale=4)
                x_axis = gr.Radio(list(plots.X_AXES), value="step", label="x axis", scale=1,
                                  info="epochs compare runs with different batch sizes")
            loss_plot = gr.Plot(label="Loss")
            perplexity_plot = gr.Plot(label="Perplexity")
            csv = gr.DownloadButton("Download the metrics (CSV)")
            for trigger in (run_picker.change, x_axis.change, demo.load):
                trigger(app.curves, [run_picker, x_axis], [loss_plot, perplexity_plot, csv], api_visibility="private")

        last_seen = gr.State(app.snapshot())  # what a new page shows: the timer sends only what changes after
        gr.Timer(TICK_SECONDS).tick(
            app.tick, [run_picker, x_axis, last_seen],
            [status, loss_plot, perplexity_plot, csv, run_picker, left, right, start, last_seen],
            api_visibility="private", concurrency_limit=None, show_progress="hidden",
        )

        gr.api(app.registry.fill_mask, api_name="fill_mask", concurrency_id="inference")
        gr.api(app.registry.names, api_name="list_models", concurrency_limit=None)
    return demo
