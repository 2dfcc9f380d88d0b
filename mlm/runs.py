"""Training jobs for the app: start `python -m mlm.train` as its own process, watch it, stop it.

The app never trains in its own process: a training job is a child process (under `accelerate launch` where
several GPUs exist), at a lower CPU priority (nice 10): requests come first, so on a 2-core machine inference
answers almost as fast while it trains (see benchmarks/app_results.md), yet training still gets a share of a machine
busy with something else. Its progress is read from the run folder's `metrics.jsonl`, the same file the Curves tab
plots. Stopping sends SIGTERM, on which the trainer finishes its step and writes a resumable checkpoint. One job
runs at a time.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mlm.checkpoint import STATE_DIR, read_metrics
from mlm.config import PRESETS, config_from_args
from mlm.hub import UserError

PROJECT_DIR = Path(__file__).resolve().parent.parent  # where `python -m mlm.train` finds the package
LOG_FILE = "train.log"
DATA_SOURCES = ("hub", "folder", "file")
TRAINING_NICENESS = 10


@dataclass
class TrainRequest:
    """What the Train tab's form asks for; `command` turns it into the CLI's arguments."""
    preset: str = "scratch"
    data_source: str = "folder"  # hub | folder | file
    data_dir: str = ""
    text_file: str = ""
    epochs: float | None = 1.0  # None keeps the preset's, like every optional field below
    lr: float | None = None
    batch_size: int | None = None
    max_train_blocks: int | None = None
    max_minutes: float | None = None
    time_budget: float | None = None  # minutes from Start; the LR schedule decays to 0 by then (mlm/schedule.py)
    snapshots: int | None = None  # weight snapshots for the Time-lapse tab (mlm/snapshots.py)
    log_every: int = 10  # a live demo wants a point every few seconds, not the CLI's 50 steps

    def arguments(self, output_dir: Path) -> list[str]:
        if self.preset not in PRESETS:
            raise UserError(f"Unknown preset '{self.preset}'; choose one of {', '.join(PRESETS)}.")
        arguments = ["--preset", self.preset, "--output-dir", str(output_dir), "--log-every", str(self.log_every)]
        if self.data_source == "folder":
            if not self.data_dir or not Path(self.data_dir).is_dir():
                raise UserError(f"The data folder '{self.data_dir}' does not exist.")
            arguments += ["--data-dir", self.data_dir]
        elif self.data_source == "file":
            if not self.text_file or not Path(self.text_file).is_file():
                raise UserError("Upload a plain-text file to train on first.")
            arguments += ["--text-file", self.text_file]
        elif self.data_source != "hub":
            raise UserError(f"Unknown data source '{self.data_source}'; choose one of {', '.join(DATA_SOURCES)}.")
        optional = {"--epochs": self.epochs, "--lr": self.lr, "--batch-size": self.batch_size, "--max-train-blocks": self.max_train_blocks,
                    "--max-minutes": self.max_minutes, "--time-budget": self.time_budget, "--snapshots": self.snapshots}
        for flag, value in optional.items():
            if value is not None:
                arguments += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return arguments


def launcher() -> list[str]:
    """The command that runs a module: plain python, or accelerate launch across several GPUs."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus), "-m"]
    return [sys.executable, "-m"]


@dataclass
class RunStatus:
    run_dir: Path | None
    state: str  # idle | starting | running | finished | stopped | failed
    message: str = ""
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    valid_loss: float | None = None
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None

    @property
    def active(self) -> bool:
        return self.state in {"starting", "running"}


class TrainingJobs:
    """At most one training process at a time, started into a new folder under `checkpoints_dir`."""

    def __init__(self, checkpoints_dir: str | Path):
        self.checkpoints_dir = Path(checkpoints_dir)
        self.process: subprocess.Popen | None = None
        self.run_dir: Path | None = None
        self.stop_requested = False
        self._lock = threading.Lock()
        atexit.register(self.stop)  # an app that goes away takes its job down with a resumable checkpoint

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def new_run_dir(self, preset: str) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir, suffix = self.checkpoints_dir / f"{preset}-{stamp}", 1
        while run_dir.exists():
            suffix += 1
            run_dir = self.checkpoints_dir / f"{preset}-{stamp}-{suffix}"
        return run_dir

    def start(self, request: TrainRequest) -> Path:
        with self._lock:
            if self.running():
                raise UserError(f"A training run is already going ({self.run_dir.name}): stop it or wait until it "
                                f"finishes. One run at a time keeps the machine responsive.")
            run_dir = self.new_run_dir(request.preset)
            arguments = request.arguments(run_dir.resolve())
            config_from_args(arguments)  # the trainer's own checks, answered now rather than from a failed process
            command = launcher() + ["mlm.train"] + arguments
            run_dir.mkdir(parents=True)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")]))}
            with open(run_dir / LOG_FILE, "w") as log:
                log.write(" ".join(command) + "\n")
                log.flush()
                # In the app's own session: Linux shares the CPU fairly between sessions (autogroups), whatever
                # their priority, so a new session would undo the lower priority below.
                self.process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            # Set before the child spawns any thread or worker (they inherit it); preexec_fn is unsafe in a threaded
            # server.
            os.setpriority(os.PRIO_PROCESS, self.process.pid, TRAINING_NICENESS)
            self.run_dir, self.stop_requested = run_dir, False
            return run_dir

    def stop(self) -> str:
        with self._lock:
            if not self.running():
                return "No training run is going."
            self.process.send_signal(signal.SIGTERM)  # accelerate launch passes it on to every worker
            self.stop_requested = True
            return f"Stopping {self.run_dir.name}: it finishes its step and saves a resumable checkpoint."

    def wait(self, timeout_s: float | None = None) -> int | None:
        return self.process.wait(timeout_s) if self.process else None

    def status(self) -> RunStatus:
        if self.process is None:
            return RunStatus(None, "idle", "No training run started from this app yet.")
        return run_status(self.run_dir, self.process.poll(), self.stop_requested)


def run_status(run_dir: Path, exit_code: int | None, stop_requested: bool = False) -> RunStatus:
    """Progress of a run from its metrics.jsonl (and, once it ended, its exit code and log)."""
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    if exit_code is None:
        state = "running" if records else "starting"
        message = "Training…" if records else "Loading data and building the model…"
        if stop_requested:
            message = "Stopping after this step; saving a resumable checkpoint…"
    # accelerate launch exits non-zero when stopped by a signal, after its workers saved their checkpoint
    elif exit_code == 0 or (stop_requested and (run_dir / STATE_DIR / "state.json").is_file()):
        finished = bool(train) and train[-1]["step"] >= train[-1]["total_steps"]
        state = "finished" if finished else "stopped"
        message = (f"Finished: {run_dir.name} is now in the model pickers." if finished else
                   f"Stopped with a resumable checkpoint: {run_dir.name} is now in the model pickers "
                   f"(resume with `python -m mlm.train --resume {run_dir}`).")
    else:
        state, message = "failed", f"Training failed: {last_log_line(run_dir)}"
    status = RunStatus(run_dir, state, message)
    if valid:
        status.valid_loss = valid[-1]["loss"]
    if records:
        status.total_steps = records[-1]["total_steps"]
    if records:  # a stopped run's last record is the validation at the step where it stopped
        latest = max(records, key=lambda r: r["step"])
        status.step, status.epoch = latest["step"], latest["epoch"]
    if train:
        last = train[-1]
        status.loss, status.tokens_per_s, status.elapsed_s = last["loss"], last["tokens_per_s"], last["elapsed_s"]
        if exit_code is None and not stop_requested and last["step"]:
            status.eta_s = last["elapsed_s"] / last["step"] * (last["total_steps"] - last["step"])
    return status


def last_log_line(run_dir: Path) -> str:
    """The trainer's one-line error (it prints `error: ...` on bad input), or the log's last line."""
    path = run_dir / LOG_FILE
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.is_file() else []
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1]
