"""The Train and Curves tabs through the UI's own handlers: a tiny CPU run is started, watched, stopped, loaded."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import gradio as gr
import pytest
import torch

from conftest import WIKITEXT_DIR
from mlm.model.files import load_model
from mlm.ui.jobs.jobs import launcher, run_status
from mlm.ui.jobs.request import TrainRequest
from mlm.ui.app import DemoApp, build_demo
from mlm.ui.common import training_allowed

START_FORM = dict(preset="scratch", source="folder", data_dir=str(WIKITEXT_DIR), upload=None, epochs=1, lr=5e-4,
                  batch_size=8, max_train_blocks=4000, max_minutes=5, max_eval_blocks=200)


@pytest.fixture
def local_app(tmp_path, monkeypatch):
    """The app on a teacher's machine (not a Space) with an empty checkpoints folder; ends any job it started."""
    monkeypatch.delenv("SPACE_ID", raising=False)
    (tmp_path / "checkpoints").mkdir()
    app = DemoApp(tmp_path / "checkpoints")
    yield app
    if app.jobs.running():
        app.jobs.stop()
        try:
            app.jobs.wait(120)
        except subprocess.TimeoutExpired:
            app.jobs.process.kill()


class Page:
    """An open browser page as the timer sees it: the latest value of each output (by name), and its last
    snapshot."""

    def __init__(self, app: DemoApp):
        self.app, self.last, self.selected = app, app.snapshot(), []
        self.shown: dict = {}

    def tick_until(self, done, timeout_s: float = 300) -> dict:
        """Call the timer handler as the page would, until `done(shown)` holds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            outputs = self.app.tick(self.selected, "step", None, self.last)
            self.last = outputs.pop("last_seen")
            for name, output in outputs.items():
                if output != gr.skip():  # a skip leaves the component as it was
                    self.shown[name] = output
            if self.shown.get("run_picker"):
                self.selected = self.shown["run_picker"]["value"]
            if done(self.shown):
                return self.shown
            time.sleep(0.5)
        raise AssertionError(f"timed out; last status: {self.app.train.training_status()}")


PICKERS = ("compare_left", "compare_right", "explain_left", "explain_right")


def train_points(shown: dict, run: str) -> int:
    loss = shown.get("loss_plot")
    return sum(len(t.x) for t in loss.data if t.name == f"{run}: train") if loss else 0


def test_start_watch_stop_and_pick_a_run(local_app):
    app = local_app
    assert app.registry.names() == []
    page = Page(app)

    started = app.train.start_training(**START_FORM)
    assert started.startswith("Started.") and "**scratch-" in started
    assert "already going" in app.train.start_training(**START_FORM)
    run = app.jobs.run_dir.name

    shown = page.tick_until(lambda s: "training" in s.get("status", "") and train_points(s, run) > 0)
    assert "| step | epoch | loss | valid loss | tokens/s | since Start | ETA (validations included) |" in shown["status"]
    assert " / 500 |" in shown["status"]  # 4,000 blocks in batches of 8
    assert shown["start"]["interactive"] is False  # Start is off while a run trains
    assert run in shown["run_picker"]["value"]  # a new run is plotted without being picked
    assert not any(picker in shown for picker in PICKERS)  # left alone while nothing new can be picked
    first_points = train_points(shown, run)
    page.tick_until(lambda s: train_points(s, run) > first_points)  # the curve grows

    assert "Stopping" in app.train.stop_training()
    assert app.jobs.wait(300) == 0
    shown = page.tick_until(lambda s: "stopped" in s["status"])
    assert "resumable checkpoint" in shown["status"]
    assert all(run in shown[picker]["choices"] for picker in PICKERS)  # Compare's and Explain's pickers offer it
    assert shown["timelapse_run"]["choices"] == [run] and shown["timelapse_run"]["value"] == run  # its snapshots
    assert shown["start"]["interactive"] is True
    state = json.loads((app.jobs.run_dir / "training_state" / "state.json").read_text())
    assert 0 < state["step"] < state["total_steps"] and not state["finished"]
    assert load_model(app.jobs.run_dir).config.num_hidden_layers == 3
    answer = app.predictor.fill_mask("The [MASK] is red.", 3, run, run)["left"]
    assert len(answer["masks"][0]["candidates"]) == 3
    second = app.train.stop_training()  # the outcome stays on screen
    assert "No training run is going." in second and "Stopped by the Stop button" in second


def test_a_bad_form_is_told_why(local_app, tmp_path):
    app = local_app
    assert "does not exist" in app.train.start_training(**{**START_FORM, "data_dir": str(tmp_path / "nowhere")})
    assert "Upload a plain-text file" in app.train.start_training(**{**START_FORM, "source": "file"})
    assert "--epochs must be positive" in app.train.start_training(**{**START_FORM, "epochs": 0})
    assert "--lr must be positive" in app.train.start_training(**{**START_FORM, "lr": -1})
    assert "not a number" in app.train.start_training(**{**START_FORM, "max_minutes": "soon"})
    assert app.jobs.status().state == "idle"


def test_a_failed_run_shows_the_trainers_message(local_app, tmp_path):
    app = local_app
    short = tmp_path / "short.txt"
    short.write_text("Two short lines.\nNot one block of 128 tokens.\n")
    assert app.train.start_training(**{**START_FORM, "source": "file", "upload": str(short)}).startswith("Started")
    assert app.jobs.wait(300) == 2
    status = app.train.training_status()
    assert "failed" in status and "Failed: error: the train text is shorter than one 128-token block" in status


@pytest.mark.parametrize("space_id, allow, allowed", [(None, None, True), ("org/demo", None, False),
                                                      ("org/demo", "1", True)])
def test_training_is_off_on_a_space_unless_the_operator_allows_it(monkeypatch, tmp_path, space_id, allow, allowed):
    for name, value in (("SPACE_ID", space_id), ("MLM_ALLOW_TRAINING", allow)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert training_allowed() is allowed
    if not allowed:
        message = DemoApp(tmp_path / "checkpoints").train.start_training(**START_FORM)
        assert "MLM_ALLOW_TRAINING=1" in message and not (tmp_path / "checkpoints").exists()


def test_on_a_space_the_train_tab_says_how_to_enable_training(monkeypatch, tmp_path):
    monkeypatch.setenv("SPACE_ID", "org/demo")
    monkeypatch.delenv("MLM_ALLOW_TRAINING", raising=False)
    demo = build_demo(DemoApp(tmp_path / "checkpoints"))
    buttons = {block.value: block for block in demo.blocks.values() if isinstance(block, gr.Button)}
    assert buttons["Start training"].interactive is False and buttons["Stop"].interactive is False
    notes = [block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown)]
    assert any("Training is off on this public Space" in note and "MLM_ALLOW_TRAINING=1" in note for note in notes if note)


def test_curves_overlay_runs_with_reference_lines_and_a_csv(app_project, tmp_path):
    app = DemoApp(app_project / "checkpoints")
    names = app.curves.run_names()
    assert names[:2] == ["BERT from scratch (WikiText-2)", "MiniLM + LoRA (WikiText-2)"]
    view = app.curves.curves(names[:2])
    loss, perplexity, csv_path = view["loss_plot"], view["perplexity_plot"], view["csv"]
    assert {t.name for t in loss.data} == {f"{n}{s}" for n in names[:2] for s in (": train", ": validation")}
    assert sorted(round(shape.y0, 2) for shape in loss.layout.shapes) == [6.48, 10.33]
    assert len(perplexity.data) == 2
    by_epoch = app.curves.curves(names[:2], "epoch")["loss_plot"]
    assert by_epoch.layout.xaxis.title.text == "epoch" and loss.layout.xaxis.title.text == "step"
    for per_step, per_epoch in zip(loss.data, by_epoch.data):  # the same points, placed by epoch
        assert list(per_step.y) == list(per_epoch.y) and max(per_epoch.x) == 1.0 < max(per_step.x)  # 1-epoch runs
    lines = open(csv_path).read().splitlines()
    assert lines[0].startswith("run,step,epoch,split,loss,perplexity")
    assert len(lines) > 4 and all(line.split(",")[0] in names for line in lines[1:])


def test_several_gpus_train_through_accelerate_launch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert launcher() == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "4", "-m"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert launcher() == [sys.executable, "-m"]


def test_the_form_becomes_the_training_commands_flags(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One line.\n")
    request = TrainRequest(preset="finetune", data_source="file", text_file=str(corpus), epochs=2.0, lr=3e-5,
                           batch_size=16, max_train_blocks=100, max_minutes=1.5)
    assert request.arguments(tmp_path / "run") == [
        "--preset", "finetune", "--output-dir", str(tmp_path / "run"), "--log-every", "10", "--text-file",
        str(corpus), "--epochs", "2", "--lr", "3e-05", "--batch-size", "16", "--max-train-blocks", "100",
        "--max-minutes", "1.5"]
    assert "--data-dir" not in TrainRequest(data_source="hub").arguments(tmp_path / "run")


def test_a_run_stopped_under_accelerate_launch_counts_as_stopped_not_failed(tmp_path):
    """accelerate launch exits non-zero on SIGTERM even though its workers saved a resumable checkpoint."""
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 10, "epoch": 0.5, "split": "train", "loss": 7.0,
                                                        "lr": 1e-3, "tokens_per_s": 1e4, "elapsed_s": 3.0,
                                                        "total_steps": 20}) + "\n")
    (tmp_path / "train.log").write_text("error: something went wrong\n")
    assert run_status(tmp_path, exit_code=1, stop_requested=True).state == "failed"  # no checkpoint was written
    (tmp_path / "training_state").mkdir()
    (tmp_path / "training_state" / "state.json").write_text('{"step": 10, "total_steps": 20, "finished": false}')
    status = run_status(tmp_path, exit_code=1, stop_requested=True)
    assert (status.state, status.step, status.total_steps, status.eta_s) == ("stopped", 10, 20, None)
    assert run_status(tmp_path, exit_code=1).state == "failed"  # not asked to stop: a real failure


def test_a_run_copied_into_checkpoints_reaches_every_model_picker(local_app):
    """A run that appears without the Train tab (copied in by a teacher, or trained from the command line) is
    offered by Compare's and Explain's pickers at the next tick, and only then."""
    page = Page(local_app)
    page.tick_until(lambda s: True)
    assert not any(picker in page.shown for picker in PICKERS)
    run = local_app.checkpoints_dir / "copied-run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "model.safetensors").write_bytes(b"weights")  # offered by its files; loading would check them
    shown = page.tick_until(lambda s: "explain_left" in s, timeout_s=30)
    assert all(shown[picker]["choices"] == ["copied-run"] for picker in PICKERS)


def test_stop_from_the_app_reaches_every_process_of_a_multi_process_run(local_app, monkeypatch):
    """What Stop does on a several-GPU machine, with two CPU processes under torchrun (the launcher accelerate
    launch uses): SIGTERM to the launcher reaches both workers, they agree on the step, save, and the app says
    "stopped" although the launcher itself exits non-zero."""
    app = local_app
    monkeypatch.setattr("mlm.ui.jobs.jobs.launcher",
                        lambda: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m"])
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # gloo on the CPU
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert "**scratch-" in app.train.start_training(**START_FORM)
    page = Page(app)
    shown = page.tick_until(lambda s: "training" in s.get("status", "") and train_points(s, app.jobs.run_dir.name) > 0)
    assert " / 250 |" in shown["status"]  # 4,000 blocks in batches of 8 x 2 processes
    assert "Stopping" in app.train.stop_training()
    app.jobs.wait(120)
    shown = page.tick_until(lambda s: "stopped" in s["status"], timeout_s=30)
    assert "resumable checkpoint" in shown["status"]
    state = json.loads((app.jobs.run_dir / "training_state" / "state.json").read_text())
    assert 0 < state["step"] < state["total_steps"] == 250 and not state["finished"]
