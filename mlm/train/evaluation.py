"""Validation over the fixed masks: loss, top-1 and top-5 as sums, so processes and batches add up.

The Evaluator reports loss = loss_sum / targets, top1 = top1_hits / targets, top5 = top5_hits / targets. Sums
rather than means let several processes add their shares with one all-reduce, and weigh batches of any size by
their targets. Everything stays on the device until the four numbers are read once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mlm.data.masking import IGNORE_INDEX


def target_ranks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How many other words score at least as high as each row's target (0: the target is the top guess).

    Ties count against the target, so a hit never depends on how a sort orders equal scores (bf16 logits tie
    often). One comparison pass over the logits instead of torch's `topk(5)`, which took about half of an
    evaluation's GPU time: the speedrun log, benchmarks/LOG.md row 41."""
    at_least = logits >= logits.gather(1, targets.clamp(min=0)[:, None])
    # counted as bf16 into fp32 (exact up to 2^24): summing the booleans directly makes CUDA copy them to int64
    # first, 8 bytes a logit (row 41 of the log has the peak memory of both)
    return at_least.to(torch.bfloat16).sum(dim=1, dtype=torch.float32).long() - 1


def batch_totals(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[loss sum, targets, top-1 hits, top-5 hits] (float64) of one batch's logits at its predicted positions."""
    counted = targets != IGNORE_INDEX
    ranks = target_ranks(logits, targets)  # on the logits as they come: a cast to fp32 keeps their order
    logits = logits.float()  # the loss in fp32 whatever the product's precision
    return torch.stack([
        F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum").double(),
        counted.sum().double(), (counted & (ranks == 0)).sum().double(), (counted & (ranks < 5)).sum().double(),
    ])


def predictions_in(objective, inputs: torch.Tensor, labels: torch.Tensor, autocast: torch.dtype | None):
    """`objective.predictions(inputs, labels)` in the run's precision: under autocast to `autocast`, or as is."""
    with torch.autocast(inputs.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        return objective.predictions(inputs, labels)


@torch.no_grad()
def validation_totals(objective, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int,
                      autocast: torch.dtype | None, abandon: Callable[[int], bool]) -> torch.Tensor | None:
    """Sum `batch_totals` over the validation blocks with `objective.predictions` (a MaskedLMObjective, whose
    model the caller has put in eval mode); None if `abandon(batch index)` says to stop (the pass is then void)."""
    totals = torch.zeros(4, device=inputs.device, dtype=torch.float64)
    for index, start in enumerate(range(0, len(inputs), batch_size)):
        if abandon(index):
            return None
        totals += batch_totals(*predictions_in(objective, inputs[start:start + batch_size],
                                               labels[start:start + batch_size], autocast))
    return totals


class Evaluator:
    """A run's validation: its objective and this process's share of the fixed validation masks.

    model: the module to put in eval mode while validating (the objective's). abandon(batch index): whether a stop
    drops the pass (mlm.train.stopping.Stopper.validation_abandoned). progress: the run's progress.json writer,
    told of the phase and of each pass's time (the app's ETA). `seconds` is the last complete pass's duration.
    """

    def __init__(self, objective, model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 autocast: torch.dtype | None, accelerator, progress, abandon: Callable[[int], bool]):
        self.objective, self.model, self.inputs, self.labels = objective, model, inputs, labels
        self.batch_size, self.autocast, self.accelerator, self.progress = batch_size, autocast, accelerator, progress
        self.abandon = abandon
        self.seconds = 0.0

    @torch.no_grad()
    def validate(self) -> dict | None:
        """{"loss", "perplexity", "top1", "top5"} over every process's share, or None if a stop abandoned it."""
        began = time.perf_counter()
        self.progress.update(phase="validating")
        self.model.eval()
        totals = validation_totals(self.objective, self.inputs, self.labels, self.batch_size, self.autocast,
                                   abandon=self.abandon)
        self.model.train()
        if totals is None:
            self.progress.update(phase="stopping")
            return None
        loss_sum, count, top1, top5 = self.accelerator.reduce(totals, "sum").tolist()
        self.seconds = time.perf_counter() - began
        self.progress.evaluation_done(self.seconds)
        self.progress.update(phase="training")
        loss = loss_sum / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "top1": top1 / max(count, 1),
                "top5": top5 / max(count, 1)}

    @torch.no_grad()
    def probe_logits(self) -> torch.Tensor:
        """The logits of this process's first validation batch, in eval mode: a checkpoint's weights must give
        finite ones (mlm.train.checkpointing)."""
        self.model.eval()
        batch = slice(0, self.batch_size)
        logits, _ = predictions_in(self.objective, self.inputs[batch], self.labels[batch], self.autocast)
        self.model.train()
        return logits
