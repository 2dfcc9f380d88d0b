"""A training run's parts, built before its first step: data, model, objectives, optimizer and the step function.

The order is part of the contract: the seed goes first (every process builds the same initial weights), then a
per-process seed (masks and dropout differ across processes); the optimizer's state is loaded before the step is
captured as a CUDA graph, and the random-number state is restored after the capture's warm-up steps drew from the
generators. So a resumed run continues bit for bit where it stopped (tests/integration/test_durable.py on the CPU,
benchmarks/check_resume_gpu.py on a GPU).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mlm.config import TrainConfig
from mlm.data.blocks import load_mlm_data
from mlm.data.masking import IGNORE_INDEX, MaskingSpec, fixed_validation_masks, max_predictions
from mlm.data.tokenizer import load_plain_tokenizer
from mlm.errors import UserError
from mlm.fast.adamw import FusedAdamW
from mlm.hub import offline_stand_in
from mlm.model.build import bert_for_masked_lm, pretrained_model, resumed_scratch_bert, scratch_bert
from mlm.model.lora import add_lora, load_lora_weights
from mlm.runs import durability
from mlm.train.objective import MaskedLMObjective
from mlm.train.precision import autocast_dtype
from mlm.train.state import load_training_state, restore_rng_state
from mlm.train.step import GradientAverager, GraphedTrainStep, TrainStep, build_optimizer


@dataclass
class Batches:
    """The training blocks (on the device) in a fresh order each epoch, drawn from the seed and the epoch alone, so
    a step's number is its position (a resumed run needs nothing else); each process takes its share of every
    global batch."""

    blocks: torch.Tensor
    seed: int
    batch_size: int  # per process
    rank: int
    processes: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.processes

    @property
    def steps_per_epoch(self) -> int:
        return len(self.blocks) // self.global_batch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.blocks), generator=generator).to(self.blocks.device)

    def batch(self, order: torch.Tensor, position: int) -> torch.Tensor:
        start = position * self.global_batch + self.rank * self.batch_size
        return self.blocks[order[start : start + self.batch_size]]


@dataclass
class Parts:
    """What `build` made. `resume`: whether the run really resumes (a folder with no checkpoint starts at 0)."""

    resume: bool
    tokenizer: object
    line_counts: dict
    model: nn.Module  # as trained (LoRA-wrapped if asked)
    inner: nn.Module  # its BertForMaskedLM, which the objectives run
    batches: Batches
    valid_inputs: torch.Tensor  # this process's share of the fixed validation masks
    valid_labels: torch.Tensor
    shared_eval_batches: int  # every process reaches this many validation batches
    total_steps: int
    warmup_steps: int
    eval_objective: MaskedLMObjective
    optimizer: FusedAdamW  # wrapped by accelerate (its loss scaler) under fp16
    start_step: int
    resumed_state: dict | None
    autocast: torch.dtype | None
    step_fn: TrainStep


def build(config: TrainConfig, accelerator, resume: bool,
          initialise: Callable[[nn.Module], None] | None = None) -> Parts:
    """Every part of a run, in the order the module's docstring explains. May change `config.pretrained` (offline:
    the packaged stand-in); raises UserError on input that cannot train. `initialise`: see `initial_model`."""
    run_dir, device, is_main = Path(config.output_dir), accelerator.device, accelerator.is_main_process
    torch.manual_seed(config.seed)  # identical initial weights on every process
    with accelerator.main_process_first():  # the main process repairs the run folder before anyone reads it
        found = prepare_run_dir(run_dir, resume) if is_main else durability.has_checkpoint(run_dir)
    resume = resume and found
    # A from-scratch run reads its tokenizer and builds its model in plain torch (mlm.data.tokenizer, mlm.model.bert):
    # importing transformers would cost seconds of start-up. Fine-tuning (LoRA too) uses transformers' classes.
    tokenizer = config.tokenizer if config.pretrained else load_plain_tokenizer(config.tokenizer)
    with accelerator.main_process_first():  # one process fills the datasets cache, the others read it
        data = load_mlm_data(config.data_dir, config.text_files, tokenizer, config.block_size,
                             config.max_train_blocks, config.max_eval_blocks)
    tokenizer = data.tokenizer
    stand_in = offline_stand_in(config.pretrained) if config.pretrained else config.pretrained
    if stand_in != config.pretrained:
        config.pretrained = stand_in
        if is_main:
            print(f"offline: fine-tuning the packaged MiniLM ({config.pretrained}) instead of bert-base-uncased",
                  file=sys.stderr)
    model = initial_model(config, tokenizer, run_dir, resume, initialise)
    if config.block_size > model.config.max_position_embeddings:
        raise UserError(f"--block-size {config.block_size} exceeds the model's {model.config.max_position_embeddings} positions")
    model = model.to(device).train()
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(config.seed + rank)  # masks and dropout differ across processes

    spec = MaskingSpec.from_tokenizer(tokenizer, config.mask_probability)
    batches = Batches(data.train_blocks.to(device), config.seed, config.batch_size, rank, world)
    valid_inputs, valid_labels = fixed_validation_masks(data.valid_blocks, spec)
    shared_eval_batches = math.ceil(len(valid_inputs) // world / config.eval_batch_size)
    valid_inputs = valid_inputs[rank::world].to(device)  # each process evaluates its share
    valid_labels = valid_labels[rank::world].to(device)
    if batches.steps_per_epoch == 0:
        raise UserError(f"{len(batches.blocks)} training blocks are fewer than one batch of {batches.global_batch}")
    total_steps = math.ceil(config.epochs * batches.steps_per_epoch)

    inner = bert_for_masked_lm(model)
    highest_rate = max(config.mask_probability, config.mask_probability_end or 0.0)
    objective = MaskedLMObjective(inner, max_predictions(config.batch_size * config.block_size, highest_rate),
                                  config.kernels)
    valid_counts = (valid_labels != IGNORE_INDEX).sum(dim=1)
    eval_objective = MaskedLMObjective(inner, max(1, int(valid_counts.max()) * config.eval_batch_size), config.kernels)
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.adam_betas, device, config.adam_eps)
    resumed_state = load_training_state(run_dir, optimizer) if resume else None
    if config.compile:
        objective = torch.compile(objective)
    if config.mixed_precision == "fp16":
        optimizer = accelerator.prepare(optimizer)  # adds the loss scaler (accelerator.backward scales)
    autocast = autocast_dtype(config.mixed_precision, device)
    if world > 1:
        GradientAverager.broadcast_from_first(model)
    step_args = (objective, optimizer, spec, config.max_grad_norm, autocast, accelerator, world)
    use_graphs = config.cuda_graphs and device.type == "cuda" and config.mixed_precision != "fp16"
    step_fn = (GraphedTrainStep(*step_args, example_batch=batches.blocks[: config.batch_size])
               if use_graphs else TrainStep(*step_args))
    # after the graph's warm-up steps drew from the generators: a resume continues them where they were
    if resume and not restore_rng_state(run_dir, device, rank, world) and is_main:
        print("note: the checkpoint has no random-number state for this run's layout: masks and dropout go on "
              "from the seed (a correct run, not a bit-identical continuation)", file=sys.stderr)
    return Parts(resume, tokenizer, data.line_counts, model, inner, batches, valid_inputs, valid_labels,
                 shared_eval_batches, total_steps, math.ceil(config.warmup_ratio * total_steps), eval_objective,
                 optimizer, resumed_state["step"] if resume else 0, resumed_state, autocast, step_fn)


def prepare_run_dir(run_dir: Path, resume: bool) -> bool:
    """Finish or discard an interrupted save, verify the checkpoint, cut metrics back to it; False: step 0."""
    step, notes = durability.prepare_run_dir(run_dir, resume)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return step is not None


def initial_model(config: TrainConfig, tokenizer, run_dir: Path, resume: bool,
                  initialise: Callable[[nn.Module], None] | None = None):
    """Fresh (scratch or pretrained, LoRA-wrapped if asked) or, for --resume, the run's own last weights.
    `initialise` changes a fresh from-scratch model in place after `config.init` (benchmarks/init_ablation.py tries
    initialisations that have no name)."""
    if resume and not config.lora_rank:
        if config.pretrained:
            return pretrained_model(str(run_dir), config.dropout)
        return resumed_scratch_bert(str(run_dir), config.dropout, config.kernels)
    if config.pretrained:
        model = pretrained_model(config.pretrained, config.dropout)
    else:
        model = scratch_bert(tokenizer, 0.1 if config.dropout is None else config.dropout, config.init, config.kernels)
        if initialise is not None:
            initialise(model)
    if config.lora_rank:
        model = add_lora(model, config.lora_rank)
        if resume:
            load_lora_weights(model, run_dir)
    return model
