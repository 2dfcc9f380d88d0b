"""The Time-lapse tab: pick a run with snapshots, move the slider (or press Play), and watch its guesses form over
training."""

from __future__ import annotations

import gradio as gr

from mlm.runs.metrics import read_metrics
from mlm.serve.checks import MAX_TOP_K
from mlm.serve.registry import ModelRegistry
from mlm.serve.timelapse import SnapshotModels
from mlm.ui.common import escape, on
from mlm.ui.compare_tab import EXAMPLES, column, guesses_table
from mlm.ui.plots.timelapse import history_figure

STORY = ("Slide through the training of a run: at first the model guesses at random; then, on the loss plateau "
         "near 6, only frequent words (*the*, *,*, *.*) whatever the sentence; then it starts to use the context. "
         "**Play** steps through every snapshot.")
PLAY, PAUSE = "▶ Play", "❚❚ Pause"  # (U+23F8, the pause sign, is in no font of a bare Linux: a box)
FRAME_SECONDS = 1.0  # Play shows a snapshot a second: long enough to read the top guesses


def player(playing: bool) -> dict:
    """{"playing" state, "frames" timer, "button"} for a player that plays or stands still."""
    return {"playing": playing, "frames": gr.Timer(active=playing), "button": gr.Button(PAUSE if playing else PLAY)}


def caption(snapshot: dict, index: int, count: int) -> str:
    return (f"**Snapshot {index + 1} of {count}**: step {snapshot['step']:,} (epoch {snapshot['epoch']:.2f}), "
            f"validation loss {snapshot['valid_loss']:.3f}")


class TimelapseTab:
    """Time-lapse handlers: the runs that keep snapshots (`snapshot_models`), their metrics (`registry`)."""

    def __init__(self, registry: ModelRegistry, snapshot_models: SnapshotModels):
        self.registry, self.snapshot_models = registry, snapshot_models

    def runs(self):
        runs = self.snapshot_models.runs()
        return gr.update(choices=runs, value=runs[0] if runs else None)

    def history(self, text: str, run: str | None) -> dict:
        """On a new run or sentence: the probability "history", and the "snapshot" slider at the last snapshot."""
        if not run:
            return {"history": {"error": "No run keeps snapshots yet: train one with --snapshots N."},
                    "snapshot": gr.update(value=0)}
        history = self.snapshot_models.candidate_history(text, run)
        count = len(history.get("snapshots", [])) or 1
        return {"history": history,
                "snapshot": gr.update(maximum=max(1, count - 1), value=count - 1, interactive=count > 1)}

    def show(self, text: str, top_k, run: str | None, index, history: dict) -> dict:
        """{"caption", the column's "filled", "tokens", "chart" and "table", "trend"} at the chosen snapshot."""
        if not run or "error" in history:
            message = history.get("error", "Pick a run.")
            return {"caption": f"⚠️ {escape(message)}", **column({"error": message}, text, top_k, []),
                    "trend": None}
        snapshots = history["snapshots"]
        index = min(int(index or 0), len(snapshots) - 1)
        snapshot = snapshots[index]
        answer = self.snapshot_models.fill_mask_at(text, top_k, run, snapshot["step"])
        valid = [r for r in read_metrics(self.registry.entry(run).folder) if r.get("split") == "valid"]
        return {"caption": caption(snapshot, index, len(snapshots)), **column(answer, text, int(top_k), []),
                "trend": history_figure(history, valid, snapshot["step"])}

    def play(self, text: str, top_k, run: str | None, playing: bool, index, history: dict) -> dict:
        """The Play button: the player, the slider ("snapshot") and what `show` shows. Pauses a playing player,
        showing nothing new; otherwise shows the slider's snapshot, or the first one when the slider is at the last
        (as a video restarts), and plays on from there. In the same queue as the ticks, so it never overtakes one."""
        count = len(history.get("snapshots", []))
        if playing or count == 0:
            return player(False)
        index = 0 if int(index or 0) >= count - 1 else int(index or 0)
        return {**player(index < count - 1), "snapshot": index, **self.show(text, top_k, run, index, history)}

    def next_frame(self, text: str, top_k, run: str | None, playing: bool, index, history: dict) -> dict:
        """A tick of the player: the slider one snapshot on and that snapshot shown; at the last snapshot the player
        stops. A tick sent before a Pause but answered after it (they share a queue) finds the player paused (the
        state is the server's) and changes nothing; while it plays on, the player's state is left alone."""
        last = len(history.get("snapshots", [])) - 1
        if not playing:
            return {}
        index = min(int(index or 0) + 1, max(last, 0))
        stop = player(False) if index >= last else {}
        return {**stop, "snapshot": index, **self.show(text, top_k, run, index, history)}


def build(tab: TimelapseTab, demo: gr.Blocks) -> dict:
    """Lay out the tab inside an open gr.Tab."""
    gr.Markdown(STORY)
    # min_width: on a phone the sentence, the run (whose name the picker would cut) and the snapshot slider each
    # take a whole line rather than a third of one
    with gr.Row():
        text = gr.Textbox(EXAMPLES[0], label="Sentence", lines=1, scale=4, min_width=280,
                          elem_id="timelapse-text")
        run = gr.Dropdown([], label="Run with snapshots", scale=2, min_width=280, elem_id="timelapse-run")
        top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="Top-k guesses", scale=1)
    with gr.Row(equal_height=True):
        snapshot = gr.Slider(0, 1, value=0, step=1, label="Snapshot (oldest to newest)", interactive=False,
                             elem_id="timelapse-step", scale=6, min_width=280)
        play = gr.Button(PLAY, scale=1, min_width=100, elem_id="timelapse-play")
    playing, frames = gr.State(False), gr.Timer(FRAME_SECONDS, active=False)
    shown = gr.Markdown("", elem_id="timelapse-caption")
    history = gr.State({})
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            filled = gr.Textbox(label="Filled with the top guess", interactive=False, elem_id="timelapse-filled")
            tokens = gr.HighlightedText(label="WordPiece tokens", show_legend=False, show_inline_category=False,
                                        color_map={"[MASK]": "orange", "## piece": "lightblue"})
            chart = gr.Plot(label="Top-k at this snapshot")
            table = guesses_table("timelapse-table")
        with gr.Column(scale=3):
            trend = gr.Plot(label="The final guesses over training", elem_id="timelapse-history")
    outputs = {"caption": shown, "filled": filled, "tokens": tokens, "chart": chart, "table": table, "trend": trend}

    def show(trigger):
        return on(trigger, tab.show, [text, top_k, run, snapshot, history], outputs, api_visibility="private",
                  concurrency_id="inference")

    demo.load(tab.runs, None, run, api_visibility="private")  # runs trained since the server started
    for trigger in (run.change, text.submit):
        show(on(trigger, tab.history, [text, run], {"history": history, "snapshot": snapshot},
                api_visibility="private", concurrency_id="inference").then)
    show(snapshot.release)
    show(top_k.release)
    player_outputs = {"playing": playing, "frames": frames, "button": play, "snapshot": snapshot, **outputs}
    on(play.click, tab.play, [text, top_k, run, playing, snapshot, history], player_outputs,
       api_visibility="private", concurrency_id="inference")
    on(frames.tick, tab.next_frame, [text, top_k, run, playing, snapshot, history], player_outputs,
       api_visibility="private", concurrency_id="inference", show_progress="hidden")
    return {"run": run, "snapshot": snapshot}
