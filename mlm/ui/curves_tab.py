"""The Curves tab: loss and perplexity of several runs overlaid, live while one trains, with a CSV download."""

from __future__ import annotations

import hashlib

import gradio as gr

from mlm import plots
from mlm.checkpoint import read_metrics


class CurvesHandlers:
    """Curves' handlers, mixed into DemoApp (needs `self.registry` and `self.csv_dir`)."""

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


def build(app, demo: gr.Blocks) -> dict:
    """Lay out the tab inside an open gr.Tab; returns the components the timer updates."""
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
    return {"run_picker": run_picker, "x_axis": x_axis, "loss_plot": loss_plot, "perplexity_plot": perplexity_plot,
            "csv": csv}
