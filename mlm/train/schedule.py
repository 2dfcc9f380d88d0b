"""The learning-rate schedule over a number of steps, or over a wall-clock budget (`--time-budget MINUTES`).

A budget run lays warm-up and linear decay to zero over time instead of steps, as in "How to Train BERT with an
Academic Budget" (Izsak et al., 2021): however fast the machine, a 5-minute run ends with its learning rate fully
decayed instead of being cut off mid-schedule. The budget counts from the process's start (the app's Start button
spawns it), so loading data and building the model are inside it; the schedule ends early enough to leave time
for the last validation and the checkpoint write (both measured on this machine when training starts), and a run
stops at the last step that can still end inside the schedule.
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import Callable

import psutil
from safetensors.torch import save_file

from mlm.errors import UserError
from mlm.train.step import linear_schedule

WRITES_PER_SAVE = 4  # the last save writes the weights twice (the run and best/) and the optimizer (twice their size)
MARGIN_S = 2.0  # the card, the tokenizer files, the process's exit
RECENT_STEPS = 3  # a step's duration: the shortest of the last few (one that included an evaluation is not typical)


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
    the budget does. It is read once per step count, so every question about one step (done? total? learning
    rate?) gets the same answer: a run never stops at a step it did not treat as its last (with a validation).
    When another step would end past the schedule's end, the schedule is complete: progress 1, learning rate 0.
    A resumed run continues from the progress it had reached (`start_progress`) over a new budget. Log records
    report the multiplier at the moment they are written, so the last one reads exactly 0.
    """

    total_steps = None  # unknown in advance: `total` projects it from the progress so far

    def __init__(self, minutes: float, warmup_ratio: float, reserve_s: Callable[[], float],
                 start_progress: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.deadline = process_start() + 60 * minutes
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
                              lambda: trainer.eval_seconds + WRITES_PER_SAVE * write_seconds(trainer) + MARGIN_S,
                              min(1.0, done))


def write_seconds(trainer) -> float:
    """How long writing the model's weights takes here, now (timed on a scratch file beside the run)."""
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: p.detach().cpu().contiguous() for name, p in trainer.model.named_parameters()}
    with tempfile.NamedTemporaryFile(dir=trainer.run_dir, suffix=".tmp") as scratch:
        started = time.monotonic()
        save_file(weights, scratch.name)
        return time.monotonic() - started
