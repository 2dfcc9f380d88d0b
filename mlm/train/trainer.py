"""Training command: pre-train the small BERT or fine-tune a pretrained one, on CPU, one GPU or several.

    python -m mlm.train --preset scratch --data-dir ../shared/data/wikitext-2-v1 --output-dir checkpoints/scratch
    accelerate launch --num_processes 2 -m mlm.train --preset fast --data-dir ... --output-dir ...

The loop is written for speed on a tiny model (see mlm/train/step.py): the token blocks live on the device, masking
happens there, the host reads the loss only every `log_every` steps, and on each GPU a step is one CUDA graph
replay. Several processes split every global batch (so `--batch-size` is per device and the global batch is
batch_size x processes), average their gradients with one all-reduce per step (captured in the graph too) and sum
their evaluation counts.

Bad input exits with status 2 and one line on stderr. SIGINT/SIGTERM (or --max-minutes) finish the current step,
write a resumable checkpoint and exit 0 (mlm/train/stopping.py); `--resume DIR` continues from its step, exactly as
if never stopped. Checkpoints are also written every --checkpoint-every-minutes, and --checkpoint-every-steps if
given (mlm/runs/durability.py, mlm/train/checkpointing.py). A non-finite loss stops the run as diverged (exit
status 3), keeping its last good checkpoint.

The Trainer is small on purpose (as minGPT's): it owns the loop and the run's state (the step, the schedule's
total, whether it diverged) and hands each component what it needs explicitly: the parts it builds
(mlm/train/setup.py), the Stopper, the Evaluator (mlm/train/evaluation.py), the Checkpointer and the
SnapshotRecorder (mlm/train/snapshots.py), which it tells of each validation. No component holds the Trainer.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

import torch

from mlm.config import TrainConfig, config_from_args
from mlm.errors import UserError, one_line_error
from mlm.model.build import parameter_count
from mlm.runs import durability
from mlm.runs.layout import CONFIG_FILE
from mlm.runs.progress import ProgressWriter, evaluations_expected
from mlm.train import setup
from mlm.train.checkpointing import Checkpointer, machine_name
from mlm.train.clock import process_start
from mlm.train.evaluation import Evaluator
from mlm.train.records import Interval, MetricsLog
from mlm.train.schedule import evaluation_due, masking_schedule, save_reserve_s, schedule_for
from mlm.train.snapshots import SeededStart, SnapshotRecorder
from mlm.train.step import set_learning_rate
from mlm.train.stopping import STOP_TEXT, StoppedBeforeTraining, Stopper


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, initialise=None):
        """`initialise`: a change to a fresh from-scratch model's initialisation (mlm.train.setup.initial_model)."""
        from accelerate import Accelerator

        self.config, self.run_dir, self.resume, self.initialise = config, Path(config.output_dir), resume, initialise
        if not resume and durability.has_checkpoint(self.run_dir):
            raise UserError(f"{self.run_dir} already holds a run: --resume it or choose another --output-dir")
        if config.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise UserError("--mixed-precision fp16 needs a GPU")
        self.accelerator = Accelerator(mixed_precision="fp16" if config.mixed_precision == "fp16" else "no")
        self.device, self.is_main = self.accelerator.device, self.accelerator.is_main_process
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 on tensor cores
        self.diverged: str | None = None  # why the run stopped as diverged
        self.metrics = MetricsLog(self.run_dir, self.is_main, self.device, created=time.monotonic())
        started_at = process_start()  # what the minutes cap, the time budget and the app's clock count from
        self.progress = ProgressWriter(self.run_dir, started_at, config.max_minutes, self.is_main)
        self.stopper = Stopper(self.accelerator, config.max_minutes, started_at, config.log_every)

    def build(self) -> None:
        """The run's parts, then the components that share them."""
        config, parts = self.config, setup.build(self.config, self.accelerator, self.resume, self.initialise)
        self.parts, self.resume, self.total_steps = parts, parts.resume, parts.total_steps
        self.evaluator = Evaluator(parts.eval_objective, parts.inner, parts.valid_inputs, parts.valid_labels,
                                   config.eval_batch_size, parts.autocast, self.accelerator, self.progress,
                                   abandon=lambda i: self.stopper.validation_abandoned(i, parts.shared_eval_batches))
        self.lr_schedule = schedule_for(config.time_budget, config.warmup_ratio, parts.total_steps, parts.warmup_steps,
                                        self.accelerator.num_processes, self.stopper.started_at,
                                        save_reserve_s(lambda: self.evaluator.seconds, self.run_dir, parts.model),
                                        parts.resumed_state)
        self.checkpointer = Checkpointer(self.run_dir, config, self.accelerator, parts.model, parts.tokenizer,
                                         parts.optimizer, parts.line_counts, self.evaluator.probe_logits,
                                         parts.start_step, self.resume)
        self.snapshots = SnapshotRecorder(
            self.run_dir, config.snapshots, parts.model, (parts.valid_inputs, parts.valid_labels),
            start_step=parts.start_step, planned_total=self.lr_schedule.total_steps,
            steps_per_epoch=parts.batches.steps_per_epoch, writes=self.is_main,
            seeded=None if config.pretrained else SeededStart(parts.tokenizer, config.seed, config.init))

    def fit(self) -> int:
        self.stopper.install()
        try:
            self.build()
        except StoppedBeforeTraining:
            self.progress.update(phase="done", stop_reason=self.stopper.reason, ended_at=time.time())
            if self.is_main:
                print(f"stopped ({STOP_TEXT[self.stopper.reason]}) before training began: nothing to save", file=sys.stderr)
            return 0
        self.stopper.training_begins()
        config, parts, batches = self.config, self.parts, self.parts.batches
        self.progress.update(evaluations_expected=evaluations_expected(parts.start_step, self.total_steps,
                                                                       batches.steps_per_epoch, config.eval_every),
                             tokens_per_step=batches.global_batch * config.block_size, total_steps=self.total_steps,
                             phase="training")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:  # a resumed run's config is part of its checkpoint, published with the next one
                config.save(self.run_dir / CONFIG_FILE)
            print(f"ready after {time.monotonic() - self.metrics.created:.1f} s: {parameter_count(parts.model):,} parameters; "
                  f"{len(batches.blocks):,} train blocks; {self.total_steps:,} steps of {batches.global_batch}; "
                  f"{machine_name(self.device, self.accelerator.num_processes)}", file=sys.stderr)
        if parts.start_step == 0:
            self.evaluate(0, self.snapshots.wanted(0, 0.0))
        step = self.train_steps()
        # A stopped run saves at once, without a last validation: Stop and the cap take effect within seconds.
        reason = "finished" if step >= self.total_steps else self.stopper.reason
        if not self.diverged:
            self.progress.update(phase="stopping" if reason != "finished" else "saving")
            self.snapshots.finish(step, final=step >= self.total_steps)  # the checkpoint about to be saved
            self.save(step)  # which checks the weights first, and may find that the run diverged after all
        self.progress.update(phase="done", stop_reason="diverged" if self.diverged else reason, ended_at=time.time())
        if self.diverged:  # the last good checkpoint stays; the app does not offer the run
            self.checkpointer.mark_diverged(step, self.diverged)
        elif self.is_main:
            state = "finished" if reason == "finished" else f"stopped ({STOP_TEXT.get(reason, reason)}); resume with --resume {self.run_dir}"
            print(f"{state} at step {step}; checkpoint in {self.run_dir}", file=sys.stderr)
        self.parts.step_fn.close()  # before end_training tears down the process group (see GraphedTrainStep.close)
        self.accelerator.end_training()
        return 3 if self.diverged else 0

    def train_steps(self) -> int:
        """Step until the schedule ends, a stop comes or the loss diverges; returns the last step made."""
        config, batches, step_fn, accelerator = self.config, self.parts.batches, self.parts.step_fn, self.accelerator
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.parts.start_step, disable=not self.is_main, dynamic_ncols=True)
        interval, order, step = Interval(self.device), None, self.parts.start_step
        stopping = self.stopper.should_stop(step)  # a stop during the first validation saves before any step
        while not self.lr_schedule.done(step) and not stopping:
            epoch, position = divmod(step, batches.steps_per_epoch)
            if order is None or position == 0:
                order = batches.epoch_order(epoch)
            set_learning_rate(self.parts.optimizer, config.lr * self.lr_schedule.multiplier(step))
            if self.mask_rate(step) is not None:
                step_fn.set_mask_rate(self.mask_rate(step))
            interval.add(step_fn(batches.batch(order, position)))
            step += 1
            bar.update(1)
            self.total_steps = self.lr_schedule.total(step)  # projected from the pace under a time budget
            end_of_epoch = step % batches.steps_per_epoch == 0 or step == self.total_steps
            logged = step % config.log_every == 0 or end_of_epoch
            if logged:
                mean_loss = interval.mean_loss(accelerator)
                if not math.isfinite(mean_loss):
                    self.diverged = f"the training loss is {mean_loss}"
                    break
                tokens, seconds = interval.steps * batches.global_batch * config.block_size, interval.lap()
                self.metrics.train({"step": step, "epoch": step / batches.steps_per_epoch, "split": "train",
                                    "loss": mean_loss, "lr": config.lr * self.lr_schedule.logged_multiplier(step),
                                    "tokens_per_s": tokens / seconds, "elapsed_s": interval.train_seconds,
                                    "total_steps": self.total_steps}, self.mask_rate(step - 1))
                bar.set_postfix(loss=f"{mean_loss:.3f}")
                interval.restart()
            with interval.paused():  # evaluating is not training time
                wanted = self.snapshots.wanted(step, self.lr_schedule.progress(step))
                if wanted or evaluation_due(step, end_of_epoch, self.total_steps, batches.steps_per_epoch,
                                            config.eval_epochs, config.eval_every):
                    self.evaluate(step, wanted)
            stopping = self.stopper.should_stop(step) or self.diverged is not None
            if not stopping and step < self.total_steps and logged and self.checkpointer.due(step):
                with interval.paused():  # nor is saving
                    self.save(step)
                    self.progress.update(phase="training")
                stopping = self.diverged is not None
        bar.close()
        return step

    def evaluate(self, step: int, snapshot: str | None = None) -> None:
        """One validation pass: logged, offered to best/ and to the snapshots (`snapshot`: why they want one here)."""
        metrics = self.evaluator.validate()
        if metrics is None:
            return
        if not math.isfinite(metrics["loss"]):
            self.diverged = f"the validation loss is {metrics['loss']}"
            return
        self.metrics.append({"step": step, "epoch": step / self.parts.batches.steps_per_epoch, "split": "valid",
                             **metrics, "total_steps": self.total_steps})
        self.checkpointer.note_validation(step, metrics["loss"])
        self.snapshots.on_validation(step, metrics["loss"], snapshot)

    def save(self, step: int) -> None:
        self.progress.update(phase="saving")
        if not self.checkpointer.save(step, self.total_steps):
            self.diverged = "its weights give non-finite predictions"

    def mask_rate(self, step: int) -> float | None:
        """The masking rate of `step` where it moves along a schedule (None: fixed, as the spec says)."""
        end = self.config.mask_probability_end
        return None if end is None else masking_schedule(step, self.total_steps, self.config.mask_probability, end)


def main(argv: list[str] | None = None) -> int:
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    try:
        config, resume_dir = config_from_args(argv)
        return Trainer(config, resume=resume_dir is not None).fit()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        message = one_line_error(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:  # a caller in the same process (a test, a notebook) gets its own signal handling back
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in handlers.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
