"""How a training run stops early (a mixin of mlm.train.trainer.Trainer, which owns the loop and the state).

Stop (the app's button, Ctrl-C, SIGTERM) and the --max-minutes cap only set a flag; the loop checks it between
steps, so a stopped run still finishes its step and writes a resumable checkpoint. Before training begins there is
nothing to save: a stop then aborts at once (StoppedBeforeTraining). Several processes must stop at the same step,
so they agree on the flag at points where they synchronise anyway.
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


class Stopping:
    """Needs the Trainer's config, device, accelerator, stop_reason, preparing and shared_eval_batches."""

    def install_stop_handlers(self, process_started_at: float) -> None:
        """SIGINT/SIGTERM mean Stop; --max-minutes is an alarm counted from the process's start, so it bounds the
        whole job (loading data, building the model, validations, training) up to the final checkpoint write."""
        def request_stop(reason: str):
            def handler(_signum, _frame):
                self.stop_reason = self.stop_reason or reason
                if self.preparing:
                    raise StoppedBeforeTraining(reason)
            return handler

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, request_stop("stop"))
        if self.config.max_minutes is not None:
            signal.signal(signal.SIGALRM, request_stop("cap"))
            left = 60 * self.config.max_minutes - (time.time() - process_started_at)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))

    def should_stop(self, step: int) -> bool:
        # Several GPU processes agree on stopping only where they sync anyway (a step takes milliseconds); CPU steps
        # take long enough that agreeing after each costs nothing, and torchrun kills workers 30 s after a SIGTERM.
        return self.agreed_stop(step % self.config.log_every == 0 or self.device.type == "cpu")

    def validation_abandoned(self, batch_index: int) -> bool:
        """Whether to drop the validation pass before this batch (every process reaches the first
        `shared_eval_batches`; they agree every EVAL_STOP_CHECK_EVERY of them)."""
        return self.agreed_stop(batch_index < self.shared_eval_batches and batch_index % EVAL_STOP_CHECK_EVERY == 0)

    def agreed_stop(self, sync_point: bool) -> bool:
        """Whether to stop now: this process's flag alone, or, across processes, their agreement at a sync point."""
        if self.accelerator.num_processes == 1:
            return self.stop_reason is not None
        if not sync_point:
            return False
        flag = torch.tensor(float(self.stop_reason is not None), device=self.device)
        return bool(self.accelerator.reduce(flag, "max").item())
