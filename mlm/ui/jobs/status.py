"""What a training run is doing or how it ended, in words for the Train tab, from the files it writes.

metrics.jsonl gives the step, losses and speed; progress.json (mlm/runs/progress.py) the phase, why it stopped and how
long its validations take; training_state/state.json whether a resumable checkpoint exists; train.log the
trainer's one-line error. The app adds what only it knows: when Start was pressed, whether Stop was, and the
process's exit code.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from mlm.runs.layout import LOG_FILE, STATE_DIR, STATE_FILE
from mlm.runs.metrics import read_metrics
from mlm.runs.progress import read_progress

ACTIVE_STATES = {"starting", "running"}
PHASE_TEXT = {
    "starting": "Starting: loading the data and building the model…",
    "preparing": "Starting: loading the data and building the model…",
    "training": "Training…",
    "validating": "Validating: scoring the held-out text (training waits meanwhile)…",
    "stopping": "Stopping: saving a resumable checkpoint…",
    "saving": "Saving the checkpoint…",
}
CAP_COUNTS = ("it counts everything from Start: loading the data, building the model, validations and training; "
              "only the final checkpoint write comes after")


@dataclass
class RunStatus:
    run_dir: Path | None
    state: str  # idle | starting | running | finished | stopped | failed
    message: str = ""
    phase: str | None = None  # while active: starting | training | validating | stopping | saving
    reason: str | None = None  # once ended: finished | cap | stop | diverged | error
    resumable: bool = False
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    valid_loss: float | None = None
    tokens_per_s: float | None = None
    elapsed_s: float | None = None  # wall-clock seconds since Start (until the end, once it ended)
    eta_s: float | None = None  # remaining training and validations, or the time left to the minutes cap
    eta_capped: bool = False  # the cap comes first

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def saved_state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STATE_DIR / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def ended_message(run_dir: Path, reason: str, resumable: bool, minutes: float | None) -> str:
    name = run_dir.name
    if reason == "finished":
        return f"Finished: {name} is now in the model pickers."
    if reason == "error":
        return f"Failed: {last_log_line(run_dir)}"
    why = {"stop": "Stopped by the Stop button",
           "cap": f"Stopped by the {minutes:g}-minute cap ({CAP_COUNTS})" if minutes else "Stopped by the minutes cap",
           "diverged": "Stopped because the loss diverged (it became infinite or not a number); the last good "
                       "checkpoint is kept"}.get(reason, f"Stopped ({reason})")
    if not resumable:
        return f"{why} before training began: nothing was saved. Start again."
    return (f"{why}. A resumable checkpoint is saved and {name} is in the model pickers; press Resume to continue "
            f"it (or run `python -m mlm.train --resume {run_dir}`).")


def run_status(run_dir: Path, exit_code: int | None, stop_requested: bool = False,
               started_at: float | None = None) -> RunStatus:
    """Progress of a run (exit_code None: still running). `started_at` is when Start was pressed (Unix time)."""
    records, progress, state = read_metrics(run_dir), read_progress(run_dir), saved_state(run_dir)
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    resumable = bool(state) and not state.get("finished")
    started_at = started_at or progress.get("started_at")
    status = RunStatus(run_dir, "running", resumable=resumable)
    if exit_code is None:
        phase = progress.get("phase") or "starting"
        if phase == "done":  # its checkpoint is written; the process is still exiting
            phase = "saving" if progress.get("stop_reason") == "finished" else "stopping"
        if stop_requested and phase != "saving":
            phase = "stopping"
        status.phase = "starting" if phase == "preparing" else phase
        status.state = "starting" if status.phase == "starting" else "running"
        status.message = PHASE_TEXT[status.phase]
    else:
        reason = progress.get("stop_reason") if progress.get("phase") == "done" else None
        # accelerate launch exits non-zero when stopped by a signal, after its workers saved their checkpoint
        if reason is None and exit_code == 0:
            reason = "finished" if state.get("finished") else "stop"
        if reason is None and stop_requested and state:
            reason = "stop"
        status.reason = reason or "error"
        status.state = {"finished": "finished", "error": "failed"}.get(status.reason, "stopped")
        status.message = ended_message(run_dir, status.reason, resumable, progress.get("max_minutes"))
    if records:  # the furthest point reached (a stopped run may end on a validation)
        latest = max(records, key=lambda r: r["step"])
        status.step, status.epoch, status.total_steps = latest["step"], latest["epoch"], records[-1]["total_steps"]
    status.total_steps = status.total_steps or progress.get("total_steps")
    if valid:
        status.valid_loss = valid[-1]["loss"]
    if train:
        status.loss, status.tokens_per_s = train[-1]["loss"], train[-1]["tokens_per_s"]
    end = time.time() if exit_code is None else progress.get("ended_at")
    if started_at and end:
        status.elapsed_s = max(0.0, end - started_at)
    if exit_code is None and status.phase != "stopping":
        status.eta_s, status.eta_capped = eta_seconds(status, progress)
    return status


def eta_seconds(status: RunStatus, progress: dict) -> tuple[float | None, bool]:
    """Remaining training steps at the latest speed plus the remaining validations at their measured mean (unknown
    until one was measured), and whether the minutes cap ends the run sooner (then the time to the cap)."""
    now, max_minutes = time.time(), progress.get("max_minutes")
    cap_left = (progress["started_at"] + 60 * max_minutes - now) if max_minutes and progress.get("started_at") else None
    done, expected = progress.get("evaluations_done", 0), progress.get("evaluations_expected")
    per_step = (progress["tokens_per_step"] / status.tokens_per_s
                if status.tokens_per_s and progress.get("tokens_per_step") else None)
    per_evaluation = progress["evaluation_s"] / done if done else None
    eta = None
    if per_step is not None and per_evaluation is not None and expected is not None and status.total_steps:
        eta = (status.total_steps - status.step) * per_step + max(expected - done, 0) * per_evaluation
        if status.phase == "validating":  # the pass under way is partly done
            eta -= min(now - progress.get("phase_started_at", now), per_evaluation)
        eta = max(eta, 0.0)
    if eta is not None and cap_left is not None and cap_left < eta:
        return max(cap_left, 0.0), True
    return eta, False


def last_log_line(run_dir: Path) -> str:
    """The trainer's one-line error (it prints `error: ...` on bad input), or the log's last line."""
    path = run_dir / LOG_FILE
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.is_file() else []
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1]
