"""What keeps a run's work safe: when to checkpoint, the state of a run folder before training (re)starts in it,
and what a diverged run leaves.

  * Periodic checkpoints, by steps and by minutes (whichever comes first), so a kill -9 loses minutes, not a run.
  * Before a run starts in its folder: an interrupted publish is finished or discarded (mlm/runs/manifest.py), the
    checkpoint is verified, and metrics.jsonl is cut back to the checkpoint's step so that no step appears twice.
    A folder whose run was killed before its first checkpoint is started over in place.
  * A run whose loss goes non-finite stops, keeps its last good checkpoint and is marked diverged: the app does
    not offer it until a resume trains it further.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlm.errors import UserError
from mlm.runs.atomic import previous_folder, write_text_atomic
from mlm.runs.layout import BEST_DIR, CHECKPOINT_MANIFEST, DIVERGED_FILE, METRICS_FILE, STATE_DIR, STATE_FILE
from mlm.runs.manifest import checkpoint_problem, committed_stagings, read_manifest, recover, verify_checkpoint
from mlm.runs.metrics import truncate_metrics


@dataclass
class CheckpointSchedule:
    """Due every `every_steps` steps or `every_minutes` minutes since the last checkpoint (None: never by that).

    `clock` (seconds, only differences count) is read for the start and at every `due`/`saved`: one clock for all
    three, so a test passes its own and never depends on the machine's uptime."""

    every_steps: int | None
    every_minutes: float | None
    last_step: int = 0
    clock: Callable[[], float] = time.monotonic
    last_time: float | None = None  # None: now, by `clock`

    def __post_init__(self):
        if self.last_time is None:
            self.last_time = self.clock()

    def due(self, step: int) -> bool:
        by_steps = self.every_steps is not None and step - self.last_step >= self.every_steps
        by_time = self.every_minutes is not None and self.clock() - self.last_time >= 60 * self.every_minutes
        return by_steps or by_time

    def saved(self, step: int) -> None:
        self.last_step, self.last_time = step, self.clock()


def has_checkpoint(run_dir: Path) -> bool:
    """Whether `run_dir` holds a checkpoint to resume (possibly one whose publish a kill interrupted)."""
    return ((run_dir / CHECKPOINT_MANIFEST).is_file() or (run_dir / STATE_DIR / STATE_FILE).is_file()
            or bool(committed_stagings(run_dir)))


def prepare_run_dir(run_dir: Path, resume: bool) -> tuple[int | None, list[str]]:
    """(step of the checkpoint training continues from, or None to start from step 0; notes for the user).

    Run by the main process only, before any process reads the folder."""
    notes = recover(run_dir) if run_dir.is_dir() else []
    _restore_best(run_dir)
    if resume and has_checkpoint(run_dir):
        verify_checkpoint(run_dir)
        step = _checkpoint_step(run_dir)
        truncate_metrics(run_dir, step)
        (run_dir / DIVERGED_FILE).unlink(missing_ok=True)
        return step, notes
    if resume:
        notes.append(f"{run_dir} holds no checkpoint yet (its run was stopped before the first one): starting over "
                     f"from step 0")
    # A run killed before its first checkpoint left only what it logged: clear that, keep the folder.
    for leftover in (run_dir / METRICS_FILE, run_dir / DIVERGED_FILE):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(run_dir / BEST_DIR, ignore_errors=True)
    return None, notes


def _checkpoint_step(run_dir: Path) -> int:
    try:
        state = json.loads((run_dir / STATE_DIR / STATE_FILE).read_text())
        if (run_dir / CHECKPOINT_MANIFEST).is_file() and read_manifest(run_dir)["step"] != state["step"]:
            raise ValueError("its manifest and training state name different steps")
        return int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot resume from {run_dir}: unreadable {STATE_DIR} ({error})") from error


def _restore_best(run_dir: Path) -> None:
    """best/ is swapped in with two renames; a kill between them leaves only best.old: put it back."""
    best = run_dir / BEST_DIR
    old = previous_folder(best)
    if old.is_dir():
        if best.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, best)


def mark_diverged(run_dir: Path, step: int, reason: str, last_good_step: int | None) -> str:
    """Record that the run diverged at `step` (the file keeps the app from offering it); returns the message."""
    write_text_atomic(run_dir / DIVERGED_FILE, json.dumps(
        {"step": step, "reason": reason, "last_good_step": last_good_step}) + "\n")
    kept = (f"its last good checkpoint (step {last_good_step}) is kept; resume it with a lower --lr"
            if last_good_step is not None else "no checkpoint had been saved; start again with a lower --lr")
    return f"the run diverged at step {step} ({reason}); {kept}"


def servable(folder: Path) -> bool:
    """Whether the app may offer `folder` (cheap: sizes, not checksums; loading verifies those)."""
    return not (folder / DIVERGED_FILE).exists() and checkpoint_problem(folder, deep=False) is None
