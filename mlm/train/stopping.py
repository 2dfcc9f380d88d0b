"""How a training run stops early: Stop (the app's button, Ctrl-C, SIGTERM) and the --max-minutes cap.

They only set a flag; the loop checks it between steps, so a stopped run still finishes its step and writes a
resumable checkpoint. Before training begins there is nothing to save: a stop then aborts at once
(StoppedBeforeTraining). Several processes must stop at the same step, so they agree on the flag at points where
they synchronise anyway.
"""

from __future__ import annotations

import signal
import time

import torch

# Several processes agree to abandon a validation pass every this many batches (one all-reduce each time).
EVAL_STOP_CHECK_EVERY = 8
# What stopped a run, as the trainer prints it (progress.json keeps the key).
STOP_TEXT = {"stop": "stop requested (Stop, Ctrl-C or SIGTERM)", "cap": "the --max-minutes cap",
             "diverged": "the loss diverged"}


class StoppedBeforeTraining(Exception):
    """A stop (or the minutes cap) while loading data or building the model: there is nothing to save yet."""


class Stopper:
    """One process's stop flag and how the processes agree on it.

    accelerator: its process count and all-reduce. max_minutes: the cap (None: none), counted from `started_at`,
    the process's start (Unix time, mlm/train/clock.py). log_every: the steps at which GPU processes synchronise.
    """

    def __init__(self, accelerator, max_minutes: float | None, started_at: float, log_every: int):
        self.accelerator, self.max_minutes, self.started_at, self.log_every = accelerator, max_minutes, started_at, log_every
        self.processes, self.device = accelerator.num_processes, accelerator.device
        self.reason: str | None = None  # "stop" or "cap" once one came
        self.preparing = True  # a stop while preparing aborts at once (StoppedBeforeTraining)

    def install(self) -> None:
        """SIGINT/SIGTERM mean Stop; --max-minutes is an alarm counted from the process's start, so it bounds the
        whole job (loading data, building the model, validations, training) up to the final checkpoint write."""
        def request_stop(reason: str):
            def handler(_signum, _frame):
                self.reason = self.reason or reason
                if self.preparing:
                    raise StoppedBeforeTraining(reason)
            return handler

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, request_stop("stop"))
        if self.max_minutes is not None:
            signal.signal(signal.SIGALRM, request_stop("cap"))
            left = 60 * self.max_minutes - (time.time() - self.started_at)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))

    def training_begins(self) -> None:
        """From now on a stop finishes the step and saves."""
        self.preparing = False

    def should_stop(self, step: int) -> bool:
        # Several GPU processes agree on stopping only where they sync anyway (a step takes milliseconds); CPU steps
        # take long enough that agreeing after each costs nothing, and torchrun kills workers 30 s after a SIGTERM.
        return self.agreed(step % self.log_every == 0 or self.device.type == "cpu")

    def validation_abandoned(self, batch_index: int, shared_batches: int) -> bool:
        """Whether to drop the validation pass before this batch (every process reaches the first `shared_batches`;
        they agree every EVAL_STOP_CHECK_EVERY of them)."""
        return self.agreed(batch_index < shared_batches and batch_index % EVAL_STOP_CHECK_EVERY == 0)

    def agreed(self, sync_point: bool) -> bool:
        """Whether to stop now: this process's flag alone, or, across processes, their agreement at a sync point."""
        if self.processes == 1:
            return self.reason is not None
        if not sync_point:
            return False
        flag = torch.tensor(float(self.reason is not None), device=self.device)
        return bool(self.accelerator.reduce(flag, "max").item())
