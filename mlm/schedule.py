"""The learning-rate schedule over a number of steps, or over a wall-clock budget (`--time-budget MINUTES`).

A budget run lays warm-up and linear decay to zero over time instead of steps, as in "How to Train BERT with an
Academic Budget" (Izsak et al., 2021): however fast the machine, a 5-minute run ends with its learning rate fully
decayed instead of being cut off mid-schedule. The budget counts from the process's start (the app's Start button
spawns it), so loading data and building the model are inside it; the schedule ends early enough to leave time
for the last validation and the checkpoint write (twice the last evaluation's duration plus a few seconds).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import psutil

from mlm.hub import UserError
from mlm.step import linear_schedule

SAVE_RESERVE_S = 5.0  # writing the final checkpoint, best/ and the card on a slow disk


def process_start() -> float:
    """This process's start, on the time.monotonic() clock."""
    return time.monotonic() - (time.time() - psutil.Process().create_time())


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
    the budget does. A resumed run continues from the progress it had reached (`start_progress`) over a new budget.
    Log records report the multiplier at the moment they are written, so the last one reads exactly 0.
    """

    total_steps = None  # unknown in advance: `total` projects it from the progress so far

    def __init__(self, minutes: float, warmup_ratio: float, reserve_s: Callable[[], float],
                 start_progress: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.deadline = process_start() + 60 * minutes
        self.warmup_ratio, self.reserve_s, self.start_progress, self.clock = warmup_ratio, reserve_s, start_progress, clock
        self.begin = self.end = None

    def progress(self, step: int = 0) -> float:
        now = self.clock()
        if self.begin is None:
            self.begin, self.end = now, self.deadline - self.reserve_s()
        if self.end <= self.begin:
            return 1.0
        share = (now - self.begin) / (self.end - self.begin)
        return min(1.0, self.start_progress + (1 - self.start_progress) * share)

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


def schedule_for(trainer, resumed_state: dict | None):
    """The Trainer's schedule: over its steps, or over --time-budget (one process: the clocks of several would
    disagree on the learning rate)."""
    config = trainer.config
    if config.time_budget is None:
        return StepSchedule(trainer.total_steps, trainer.warmup_steps)
    if trainer.accelerator.num_processes > 1:
        raise UserError("--time-budget runs in one process; drop it or launch a single process")
    done = resumed_state["step"] / resumed_state["total_steps"] if resumed_state else 0.0
    return TimeBudgetSchedule(config.time_budget, config.warmup_ratio,
                              lambda: 2 * trainer.eval_seconds + SAVE_RESERVE_S, min(1.0, done))
