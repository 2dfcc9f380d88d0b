"""A run's schedules: the learning rate over a number of steps or over a wall-clock budget (`--time-budget
MINUTES`), and the masking rate over the steps.

A budget run lays warm-up and linear decay to zero over time instead of steps, as in "How to Train BERT with an
Academic Budget" (Izsak et al., 2021): however fast the machine, a 5-minute run ends with its learning rate fully
decayed instead of being cut off mid-schedule. The budget counts from the process's start (mlm/train/clock.py: the
app's Start button spawns the process), so loading data and building the model are inside it; the schedule ends
early enough to leave time for the last validation and the checkpoint write (both measured on this machine when
training starts), and a run stops at the last step that can still end inside the schedule.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Callable

from safetensors.torch import save_file
from torch import nn

from mlm.errors import UserError
from mlm.train.clock import on_monotonic

WRITES_PER_SAVE = 4  # the last save writes the weights twice (the run and best/) and the optimizer (twice their size)
MARGIN_S = 2.0  # the card, the tokenizer files, the process's exit
RECENT_STEPS = 3  # a step's duration: the shortest of the last few (one that included an evaluation is not typical)


def linear_schedule(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then linear decay to zero (as HF's linear schedule)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def masking_schedule(step: int, total_steps: int, start: float, end: float | None) -> float:
    """Training masking rate: linear from `start` to `end` over the run (constant `start` without an end)."""
    if end is None:
        return start
    return start + (end - start) * min(1.0, step / max(1, total_steps - 1))


def evaluation_due(step: int, end_of_epoch: bool, total_steps: int, steps_per_epoch: int, eval_epochs: int,
                   eval_every: int | None) -> bool:
    """Whether a validation follows `step`: after the last step, every `eval_epochs` epochs, and every `eval_every`
    steps if set."""
    epoch_due = end_of_epoch and eval_epochs and (step // steps_per_epoch) % eval_epochs == 0
    return step == total_steps or bool(epoch_due) or bool(eval_every and step % eval_every == 0)


class StepSchedule:
    """Warm-up then linear decay to zero over `total_steps` (HF's linear schedule)."""

    def __init__(self, total_steps: int, warmup_steps: int):
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    def multiplier(self, step: int) -> float:
        """Of the peak learning rate, for the step about to run."""
        return linear_schedule(step, self.total_steps, self.warmup_steps)

    def logged_multiplier(self, step: int) -> float:
        """What a log record after `step` steps reports: the multiplier its last step used."""
        return self.multiplier(step - 1)

    def progress(self, step: int) -> float:
        return step / self.total_steps

    def done(self, step: int) -> bool:
        return step >= self.total_steps

    def total(self, step: int) -> int:
        return self.total_steps


class TimeBudgetSchedule:
    """Warm-up then linear decay to zero over the wall-clock time left in the budget.

    The clock starts at the first step (set-up has already spent part of the budget) and ends `reserve_s()` before
    the budget does. It is read once per step count, so every question about one step (done? total? learning
    rate?) gets the same answer: a run never stops at a step it did not treat as its last (with a validation).
    When another step would end past the schedule's end, the schedule is complete: progress 1, learning rate 0.
    A resumed run continues from the progress it had reached (`start_progress`) over a new budget. Log records
    report the multiplier at the moment they are written, so the last one reads exactly 0.
    """

    total_steps = None  # unknown in advance: `total` projects it from the progress so far

    def __init__(self, minutes: float, warmup_ratio: float, reserve_s: Callable[[], float], started: float,
                 start_progress: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.deadline = started + 60 * minutes  # `started`: the process's start on `clock`
        self.warmup_ratio, self.reserve_s, self.start_progress, self.clock = warmup_ratio, reserve_s, start_progress, clock
        self.begin = self.end = None
        self.read: tuple[int, float, float] | None = None  # (step, time, progress) of the last clock reading
        self.step_seconds: list[float] = []

    def progress(self, step: int = 0) -> float:
        if self.read is not None and self.read[0] == step:
            return self.read[2]
        now = self.clock()
        if self.begin is None:
            self.begin, self.end = now, self.deadline - self.reserve_s()
        if self.read is not None and step > self.read[0]:
            self.step_seconds = (self.step_seconds + [(now - self.read[1]) / (step - self.read[0])])[-RECENT_STEPS:]
        next_step_ends = now + min(self.step_seconds, default=0.0)
        share = (now - self.begin) / (self.end - self.begin) if next_step_ends < self.end else 1.0
        self.read = (step, now, min(1.0, self.start_progress + (1 - self.start_progress) * share))
        return self.read[2]

    def multiplier(self, step: int) -> float:
        progress = self.progress(step)
        if progress < self.warmup_ratio:
            return progress / self.warmup_ratio
        return max(0.0, (1 - progress) / (1 - self.warmup_ratio))

    def logged_multiplier(self, step: int) -> float:
        return self.multiplier(step)

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0

    def total(self, step: int) -> int:
        """The steps the run will have made at the end of its budget, at the pace so far (exact once done)."""
        progress = self.progress(step)
        return step if progress >= 1.0 or progress <= 0 else math.ceil(step / progress)


def schedule_for(time_budget: float | None, warmup_ratio: float, total_steps: int, warmup_steps: int,
                 processes: int, started_at: float, reserve_s: Callable[[], float], resumed_state: dict | None):
    """A run's schedule: over its steps, or over --time-budget counted from `started_at` (the process's start, Unix
    time), ending `reserve_s()` early. One process only: the clocks of several would disagree on the rate."""
    if time_budget is None:
        return StepSchedule(total_steps, warmup_steps)
    if processes > 1:
        raise UserError("--time-budget runs in one process; drop it or launch a single process")
    done = resumed_state["step"] / resumed_state["total_steps"] if resumed_state else 0.0
    return TimeBudgetSchedule(time_budget, warmup_ratio, reserve_s, on_monotonic(started_at), min(1.0, done))


def save_reserve_s(evaluation_s: Callable[[], float], run_dir: Path, model: nn.Module) -> Callable[[], float]:
    """What a budget run keeps back for its end: the last validation (as long as the latest one took), the last
    checkpoint's writes (timed here, now, when the schedule first asks) and a margin."""
    return lambda: evaluation_s() + WRITES_PER_SAVE * write_seconds(run_dir, model) + MARGIN_S


def write_seconds(run_dir: Path, model: nn.Module) -> float:
    """How long writing the model's weights takes here, now (timed on a scratch file beside the run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()}
    with tempfile.NamedTemporaryFile(dir=run_dir, suffix=".tmp") as scratch:
        started = time.monotonic()
        save_file(weights, scratch.name)
        return time.monotonic() - started
