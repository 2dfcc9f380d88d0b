"""`progress.json`: what a training process is doing right now, for the app's status panel.

metrics.jsonl says how far training got; it cannot say that the process is validating, writing a checkpoint or
stopping, nor why it stopped. The trainer rewrites this small file (atomically) at every change of phase, and the
app reads it:

    phase                 preparing | validating | training | stopping | saving | done
    stop_reason           None while running; then finished | cap | stop | diverged (error: the app's own verdict
                          from a failed exit, since a crashed trainer cannot say so)
    started_at            Unix time the training process started (what the minutes cap counts from)
    max_minutes           the cap (None: none)
    phase_started_at      Unix time the current phase began
    ended_at              Unix time it finished writing its last checkpoint
    evaluations_done      validation passes recorded by this process
    evaluations_expected  validation passes this process will run if it is not stopped
    evaluation_s          seconds those passes took in all (the ETA's cost of each remaining one)
    tokens_per_step       training tokens per optimizer step (the ETA's step time comes from metrics' tokens/s)
    total_steps           the run's last step (known before metrics.jsonl has a line)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlm.runs.atomic import write_text_atomic
from mlm.runs.layout import PROGRESS_FILE

STOP_REASONS = ("finished", "cap", "stop", "diverged", "error")


def evaluations_expected(start_step: int, total_steps: int, steps_per_epoch: int, eval_every: int | None) -> int:
    """Validation passes of a run from `start_step`: step 0 (fresh runs), every epoch end, the last step, and every
    `eval_every` steps, each step counted once (the trainer's own rule)."""
    steps = {s for s in range(steps_per_epoch, total_steps + 1, steps_per_epoch)} | {total_steps}
    if eval_every:
        steps |= set(range(eval_every, total_steps + 1, eval_every))
    return int(start_step == 0) + sum(1 for s in steps if s > start_step)


class ProgressWriter:
    """The trainer's side: every update rewrites the whole file (a few hundred bytes) in one rename."""

    def __init__(self, run_dir: Path, started_at: float, max_minutes: float | None = None, enabled: bool = True):
        self.path = Path(run_dir) / PROGRESS_FILE
        self.enabled = enabled  # only the main process of a multi-process run writes
        self.state = {"phase": "preparing", "stop_reason": None, "started_at": started_at,
                      "max_minutes": max_minutes, "phase_started_at": time.time(), "ended_at": None, "evaluations_done": 0,
                      "evaluations_expected": None, "evaluation_s": 0.0, "tokens_per_step": None}

    def update(self, **fields) -> None:
        if "phase" in fields and fields["phase"] != self.state["phase"]:
            fields.setdefault("phase_started_at", time.time())
        self.state.update(fields)
        if self.enabled and self.path.parent.is_dir():
            write_text_atomic(self.path, json.dumps(self.state) + "\n")

    def evaluation_done(self, seconds: float) -> None:
        self.update(evaluations_done=self.state["evaluations_done"] + 1,
                    evaluation_s=self.state["evaluation_s"] + seconds)


def read_progress(run_dir: str | Path) -> dict:
    """The last complete progress.json, or {} before the trainer wrote one (or if it is unreadable)."""
    try:
        progress = json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return progress if isinstance(progress, dict) else {}
