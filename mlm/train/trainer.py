"""Training command: pre-train the small BERT or fine-tune a pretrained one, on CPU, one GPU or several.

    python -m mlm.train --preset scratch --data-dir ../shared/data/wikitext-2-v1 --output-dir checkpoints/scratch
    accelerate launch --num_processes 2 -m mlm.train --preset fast --data-dir ... --output-dir ...

The loop is written for speed on a tiny model (see mlm/train/step.py): the token blocks live on the device, masking
happens there, the host reads the loss only every `log_every` steps, and on each GPU a step is one CUDA graph
replay. Several processes split every global batch (so `--batch-size` is per device and the global batch is
batch_size x processes), average their gradients with one all-reduce per step (captured in the graph too) and sum
their evaluation counts.

Bad input exits with status 2 and one line on stderr. SIGINT/SIGTERM (or --max-minutes) finish the current step,
write a resumable checkpoint and exit 0 (mlm/train/stopping.py); `--resume DIR` continues from its step, exactly as if
never stopped. Checkpoints are also written every --checkpoint-every-minutes, and --checkpoint-every-steps if given
(mlm/runs/durability.py, mlm/train/checkpointing.py). A non-finite loss stops the run as diverged (exit status 3), keeping its
last good checkpoint. Validation metrics: mlm/train/evaluation.py.
"""

from __future__ import annotations

import math
import signal
import sys
import time

PROCESS_STARTED_AT = time.time()  # before the slow imports below: what the minutes cap and the app's clock count from

from pathlib import Path

from mlm.cache import keep_bytecode

keep_bytecode()  # before torch: on images that write no bytecode, torch's own is kept in the cache (mlm/cache.py)

import torch

from mlm.runs import checkpoint as ckpt
from mlm.runs import durability
from mlm.config import TrainConfig, config_from_args
from mlm.data.corpus import (
    IGNORE_INDEX, MaskingSpec, fixed_validation_masks, load_mlm_data, load_plain_tokenizer, max_predictions,
)
from mlm.train.evaluation import validation_totals
from mlm.errors import one_line_error
from mlm.hub import offline_stand_in
from mlm.errors import UserError
from mlm.model.build import (
    add_lora, bert_for_masked_lm, load_lora_weights, parameter_count, pretrained_model, resumed_scratch_bert,
    scratch_bert,
)
from mlm.train.objective import MaskedLMObjective
from mlm.runs.progress import ProgressWriter, evaluations_expected
from mlm.train.checkpointing import Checkpointing, machine_name
from mlm.train.stopping import STOP_TEXT, Stopping, StoppedBeforeTraining
from mlm.train.schedule import schedule_for
from mlm.train.snapshots import SnapshotRecorder
from mlm.train.step import (
    GradientAverager, GraphedTrainStep, TrainStep, build_optimizer, masking_schedule, set_learning_rate,
)


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware does it natively (recent GPUs; CPUs with AMX), else fp32. Even the original recipe's
    batch of 8 x 128 tokens gains on a GPU now that the plain model's backward writes fp32 gradients directly
    (mlm/fast/layers.py; an H200 step 1.54 -> 1.21 ms, the same loss: benchmarks/README.md, speedrun log); with
    transformers' model it lost (an H100: 13.1 s for 3 epochs against 11.8 s in fp32)."""
    if mixed_precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return torch.bfloat16 if device.type == "cpu" and amx else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)


class Trainer(Checkpointing, Stopping):
    def __init__(self, config: TrainConfig, resume: bool = False):
        from accelerate import Accelerator

        self.config = config
        self.run_dir = Path(config.output_dir)
        self.resume = resume
        if not resume and durability.has_checkpoint(self.run_dir):
            raise UserError(f"{self.run_dir} already holds a run: --resume it or choose another --output-dir")
        if config.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise UserError("--mixed-precision fp16 needs a GPU")
        self.accelerator = Accelerator(mixed_precision="fp16" if config.mixed_precision == "fp16" else "no")
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores where bf16 is off
        torch.backends.cudnn.allow_tf32 = True
        self.stop_reason: str | None = None
        self.diverged: str | None = None  # why the run stopped as diverged
        self.created = time.monotonic()
        self.eval_seconds = 0.0
        self.preparing = True  # a stop while preparing aborts at once (StoppedBeforeTraining)
        self.progress = ProgressWriter(self.run_dir, PROCESS_STARTED_AT, config.max_minutes, self.is_main)

    # ------------------------------------------------------------------------------------------------------------
    # Set-up

    def build(self) -> None:
        config, accelerator = self.config, self.accelerator
        torch.manual_seed(config.seed)  # identical initial weights on every process
        with accelerator.main_process_first():  # the main process repairs the run folder before anyone reads it
            found = self.prepare_run_dir() if self.is_main else durability.has_checkpoint(self.run_dir)
        self.resume = self.resume and found
        # A from-scratch run reads its tokenizer and builds its model in plain torch (mlm.data.tokenizer, mlm.model.bert):
        # importing transformers would cost ~3 s of start-up. Fine-tuning (LoRA too) uses transformers' classes.
        self.plain = not config.pretrained
        tokenizer = load_plain_tokenizer(config.tokenizer) if self.plain else config.tokenizer
        with accelerator.main_process_first():  # one process fills the datasets cache, the others read it
            data = load_mlm_data(config.data_dir, config.text_files, tokenizer, config.block_size,
                                 config.max_train_blocks, config.max_eval_blocks)
        self.tokenizer, self.line_counts = data.tokenizer, data.line_counts
        stand_in = offline_stand_in(config.pretrained) if config.pretrained else config.pretrained
        if stand_in != config.pretrained:
            config.pretrained = stand_in
            if self.is_main:
                print(f"offline: fine-tuning the packaged MiniLM ({config.pretrained}) instead of bert-base-uncased",
                      file=sys.stderr)
        model = self.initial_model()
        if config.block_size > model.config.max_position_embeddings:
            raise UserError(f"--block-size {config.block_size} exceeds the model's {model.config.max_position_embeddings} positions")
        self.model = model.to(self.device).train()
        torch.manual_seed(config.seed + accelerator.process_index)  # masks and dropout differ across processes

        self.spec = MaskingSpec.from_tokenizer(self.tokenizer, config.mask_probability)
        self.train_blocks = data.train_blocks.to(self.device)
        valid_inputs, valid_labels = fixed_validation_masks(data.valid_blocks, self.spec)
        rank, world = accelerator.process_index, accelerator.num_processes
        # every process reaches this many evaluation batches: where they can agree to abandon a pass
        self.shared_eval_batches = math.ceil(len(valid_inputs) // world / config.eval_batch_size)
        self.valid_inputs = valid_inputs[rank::world].to(self.device)  # each process evaluates its share
        self.valid_labels = valid_labels[rank::world].to(self.device)

        self.global_batch = config.batch_size * world
        self.steps_per_epoch = len(self.train_blocks) // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(f"{len(self.train_blocks)} training blocks are fewer than one batch of {self.global_batch}")
        self.total_steps = math.ceil(config.epochs * self.steps_per_epoch)
        self.warmup_steps = math.ceil(config.warmup_ratio * self.total_steps)

        inner = bert_for_masked_lm(self.model)
        batch_tokens = config.batch_size * config.block_size
        highest_rate = max(config.mask_probability, config.mask_probability_end or 0.0)
        objective = MaskedLMObjective(inner, max_predictions(batch_tokens, highest_rate))
        valid_counts = (self.valid_labels != IGNORE_INDEX).sum(dim=1)
        self.eval_objective = MaskedLMObjective(inner, max(1, int(valid_counts.max()) * config.eval_batch_size))
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay, config.adam_betas, self.device,
                                         config.adam_eps)
        self.start_step, resumed_state = 0, None
        if self.resume:
            resumed_state = ckpt.load_training_state(self.run_dir, self.optimizer)
            self.start_step = resumed_state["step"]
        self.lr_schedule = schedule_for(self, resumed_state)  # over the steps, or over --time-budget
        if config.compile:
            objective = torch.compile(objective)
        if config.mixed_precision == "fp16":
            self.optimizer = accelerator.prepare(self.optimizer)  # adds the loss scaler (accelerator.backward scales)
        self.autocast = autocast_dtype(config.mixed_precision, self.device)
        if world > 1:
            GradientAverager.broadcast_from_first(self.model)
        step_args = (objective, self.optimizer, self.spec, config.max_grad_norm, self.autocast, accelerator, world)
        use_graphs = config.cuda_graphs and self.device.type == "cuda" and config.mixed_precision != "fp16"
        self.step_fn = (GraphedTrainStep(*step_args, example_batch=self.train_blocks[: config.batch_size])
                        if use_graphs else TrainStep(*step_args))
        # after the graph's warm-up steps drew from the generators: a resume continues them where they were
        if self.resume and not ckpt.restore_rng_state(self.run_dir, self.device, rank, world) and self.is_main:
            print("note: the checkpoint has no random-number state for this run's layout: masks and dropout go on "
                  "from the seed (a correct run, not a bit-identical continuation)", file=sys.stderr)
        self.schedule = durability.CheckpointSchedule(config.checkpoint_every_steps or None,
                                                      config.checkpoint_every_minutes or None, self.start_step)
        self.saved_step = self.start_step if self.resume else None
        self.snapshots = SnapshotRecorder(self, config.snapshots)

    def prepare_run_dir(self) -> bool:
        """Finish or discard an interrupted save, verify the checkpoint, cut metrics back to it; False: step 0."""
        step, notes = durability.prepare_run_dir(self.run_dir, self.resume)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return step is not None

    def initial_model(self):
        """Fresh (scratch or pretrained, LoRA-wrapped if asked) or, for --resume, the run's own last weights."""
        config = self.config
        if self.resume and not config.lora_rank:
            load = resumed_scratch_bert if self.plain else pretrained_model
            return load(str(self.run_dir), config.dropout)
        if config.pretrained:
            model = pretrained_model(config.pretrained, config.dropout)
        else:
            model = scratch_bert(self.tokenizer, 0.1 if config.dropout is None else config.dropout, config.init)
        if config.lora_rank:
            model = add_lora(model, config.lora_rank)
            if self.resume:
                load_lora_weights(model, self.run_dir)
        return model

    # ------------------------------------------------------------------------------------------------------------
    # The loop

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(len(self.train_blocks), generator=generator).to(self.device)

    def batch(self, order: torch.Tensor, position: int) -> torch.Tensor:
        start = position * self.global_batch + self.accelerator.process_index * self.config.batch_size
        return self.train_blocks[order[start : start + self.config.batch_size]]

    def fit(self) -> int:
        self.install_stop_handlers(PROCESS_STARTED_AT)
        try:
            self.build()
        except StoppedBeforeTraining:
            self.progress.update(phase="done", stop_reason=self.stop_reason, ended_at=time.time())
            if self.is_main:
                print(f"stopped ({STOP_TEXT[self.stop_reason]}) before training began: nothing to save", file=sys.stderr)
            return 0
        self.preparing = False
        config = self.config
        self.progress.update(evaluations_expected=evaluations_expected(self.start_step, self.total_steps,
                                                                       self.steps_per_epoch, config.eval_every),
                             tokens_per_step=self.global_batch * config.block_size, total_steps=self.total_steps,
                             phase="training")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:  # a resumed run's config is part of its checkpoint, published with the next one
                config.save(self.run_dir / ckpt.CONFIG_FILE)
            print(f"ready after {time.monotonic() - self.created:.1f} s: {parameter_count(self.model):,} parameters; {len(self.train_blocks):,} train blocks; "
                  f"{self.total_steps:,} steps of {self.global_batch}; {machine_name(self.device, self.accelerator.num_processes)}",
                  file=sys.stderr)
        self.best_weights = None
        self.best_loss = min((m["loss"] for m in ckpt.read_metrics(self.run_dir) if m["split"] == "valid"), default=math.inf)
        if self.start_step == 0:
            self.evaluate(0)
            self.snapshots.maybe_take(0, 0.0)

        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.start_step, disable=not self.is_main, dynamic_ncols=True)
        train_seconds, loss_sum, interval_start, interval_steps = 0.0, torch.zeros((), device=self.device), time.perf_counter(), 0
        order, step = None, self.start_step
        stopping = self.should_stop(step)  # a stop during the first validation saves before any step
        while not self.lr_schedule.done(step) and not stopping:
            epoch, position = divmod(step, self.steps_per_epoch)
            if order is None or position == 0:
                order = self.epoch_order(epoch)
            set_learning_rate(self.optimizer, config.lr * self.lr_schedule.multiplier(step))
            if config.mask_probability_end is not None:
                self.step_fn.set_mask_rate(masking_schedule(step, self.total_steps, config.mask_probability,
                                                            config.mask_probability_end))
            loss_sum += self.step_fn(self.batch(order, position))
            step += 1
            interval_steps += 1
            bar.update(1)
            self.total_steps = self.lr_schedule.total(step)  # projected from the pace under a time budget
            end_of_epoch = step % self.steps_per_epoch == 0 or step == self.total_steps
            if step % config.log_every == 0 or end_of_epoch:
                mean_loss = (self.accelerator.reduce(loss_sum, "mean") / interval_steps).item()  # the only sync
                if not math.isfinite(mean_loss):
                    self.diverged = f"the training loss is {mean_loss}"
                    break
                seconds = time.perf_counter() - interval_start
                train_seconds += seconds
                tokens = interval_steps * self.global_batch * config.block_size
                self.log({"step": step, "epoch": step / self.steps_per_epoch, "split": "train", "loss": mean_loss,
                          "lr": config.lr * self.lr_schedule.logged_multiplier(step),
                          "tokens_per_s": tokens / seconds, "elapsed_s": train_seconds, "total_steps": self.total_steps,
                          **self.mask_rate_record(step - 1), **self.memory_record()})
                bar.set_postfix(loss=f"{mean_loss:.3f}")
                loss_sum.zero_()
                interval_steps = 0
                interval_start = time.perf_counter()
            evaluation_start = time.perf_counter()
            if self.evaluation_due(step, end_of_epoch):
                self.evaluate(step)
            self.snapshots.maybe_take(step, self.lr_schedule.progress(step))  # evaluates first when one is due
            interval_start += time.perf_counter() - evaluation_start  # evaluating is not training time
            stopping = self.should_stop(step) or self.diverged is not None
            if not stopping and step < self.total_steps and (step % config.log_every == 0 or end_of_epoch) \
                    and self.checkpoint_due(step):
                saving_start = time.perf_counter()
                self.save(step)
                self.progress.update(phase="training")
                interval_start += time.perf_counter() - saving_start  # nor is saving
                stopping = self.diverged is not None
        bar.close()
        # A stopped run saves at once, without a last validation: Stop and the cap take effect within seconds.
        reason = "finished" if step >= self.total_steps else self.stop_reason
        if not self.diverged:
            self.progress.update(phase="stopping" if reason != "finished" else "saving")
            self.snapshots.finish(step)  # the checkpoint about to be saved is the last snapshot
            self.save(step)  # which checks the weights first, and may find that the run diverged after all
        if self.diverged:
            self.progress.update(phase="done", stop_reason="diverged", ended_at=time.time())
            return self.stop_diverged(step)
        self.progress.update(phase="done", stop_reason=reason, ended_at=time.time())
        if self.is_main:
            state = "finished" if reason == "finished" else f"stopped ({STOP_TEXT.get(reason, reason)}); resume with --resume {self.run_dir}"
            print(f"{state} at step {step}; checkpoint in {self.run_dir}", file=sys.stderr)
        self.step_fn.close()  # before end_training tears down the process group (see GraphedTrainStep.close)
        self.accelerator.end_training()
        return 0

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation, logging, checkpoints

    def evaluation_due(self, step: int, end_of_epoch: bool) -> bool:
        """After the last step, every `eval_epochs` epochs, and every `eval_every` steps if set."""
        config = self.config
        epoch_due = end_of_epoch and config.eval_epochs and (step // self.steps_per_epoch) % config.eval_epochs == 0
        return step == self.total_steps or bool(epoch_due) or bool(config.eval_every and step % config.eval_every == 0)

    @torch.no_grad()
    def evaluate(self, step: int) -> None:
        """One validation pass, logged; a stop during it abandons the pass (nothing is recorded)."""
        began = time.perf_counter()
        self.progress.update(phase="validating")
        model = bert_for_masked_lm(self.model).eval()
        totals = validation_totals(
            self.eval_objective, self.valid_inputs, self.valid_labels, self.config.eval_batch_size, self.autocast,
            abandon=self.validation_abandoned)
        model.train()
        if totals is None:
            self.progress.update(phase="stopping")
            return
        loss_sum, count, top1, top5 = self.accelerator.reduce(totals, "sum").tolist()
        self.progress.evaluation_done(time.perf_counter() - began)
        self.progress.update(phase="training")
        loss = loss_sum / max(count, 1)
        if not math.isfinite(loss):
            self.diverged = f"the validation loss is {loss}"
            return
        self.log({"step": step, "epoch": step / self.steps_per_epoch, "split": "valid", "loss": loss,
                  "perplexity": math.exp(min(loss, 50)), "top1": top1 / max(count, 1), "top5": top5 / max(count, 1),
                  "total_steps": self.total_steps})
        if step > 0 and loss < self.best_loss:  # kept on the device; written with the last checkpoint (saves time)
            self.best_loss = loss
            self.best_weights = {k: v.detach().clone() for k, v in self.trainable_state().items()}
        self.eval_seconds = time.perf_counter() - began
        self.snapshots.after_validation(step, loss)

    def mask_rate_record(self, step: int) -> dict:
        config = self.config
        if config.mask_probability_end is None:
            return {}
        return {"mask_rate": masking_schedule(step, self.total_steps, config.mask_probability, config.mask_probability_end)}

    def memory_record(self) -> dict:
        if self.device.type != "cuda":
            return {}
        return {"max_memory_mb": torch.cuda.max_memory_allocated(self.device) / 2**20}

    def log(self, record: dict) -> None:
        """Append to metrics.jsonl, stamped with seconds since the command started (start-up included)."""
        if self.is_main:
            ckpt.append_metrics(self.run_dir, {**record, "wall_s": time.monotonic() - self.created})


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
