"""When a training run takes its weight snapshots (for the time-lapse of how its guesses formed), and in which format.

`--snapshots N` keeps N snapshots: the random start (step 0), then log-spaced points from 2% of the run to its
end (early training changes fastest), plus the first validation point that leaves the loss plateau near 6 (loss
<= 5.5), where the model starts to use the context. Each snapshot is taken at a validation point, so it carries
its validation loss.

A snapshot is stored in the smallest format whose predictions stay faithful: the top-1 guess agrees with the
full-precision weights on at least FAITHFUL_TOP1 of the validation masks checked (recorded in the manifest and the
model card). The random start of a from-scratch run is rebuilt from its seed and init (nothing stored, checked bit
for bit when written); any other snapshot tries int4, then int8, then fp16 (mlm/runs/snapshots.py: the formats,
files and manifest). The last snapshot is the run's own final checkpoint, listed, not copied; when a stopped run
is resumed, that entry is first written out compactly, since the run folder's weights are about to move on.

How it meets the trainer: by events, not by a handle on the trainer. Validation is the trainer's (it logs it,
keeps best/, may find the run diverged), and a snapshot needs one at its step. So after each step the trainer
asks `wanted(step, progress)` (a reason, or None), validates if that or its own schedule says so, and reports
every validation with `on_validation(step, loss, wanted)`; the recorder writes then. Nothing calls back into the
trainer, so a validation never runs inside another component, and every process takes the same decisions (a
multi-process validation is collective): only the main process writes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mlm.data.masking import IGNORE_INDEX
from mlm.model.build import seeded_start
from mlm.runs.snapshots import (
    FAITHFUL_TOP1, FORMATS, RUN_WEIGHTS, SEED, encode_model, load_encoded, read_manifest, remove_temporaries,
    snapshot_dir, unique_tensors, write_manifest, write_snapshot,
)

PLATEAU_EXIT_LOSS = 5.5  # the plateau sits near 6 (unigram frequencies); below 5.5 the model uses context
# The first log-spaced snapshot: after 2% of the steps (or of the time budget), early enough to catch the plateau
# even where the mimetic init leaves it at epoch 2 (`fast-long`: step 100 of 4,997, epoch 0.7), so `--snapshots 3`
# tells the story: random, plateau, leaving it (the extra snapshot at loss <= 5.5), final.
FIRST_SHARE = 0.02
CHECK_BLOCKS = 128  # validation blocks (about 2,400 masks) used to measure a compact format's agreement


def planned_fractions(count: int) -> list[float]:
    """Shares of the schedule: 0 (the random start), then log-spaced from FIRST_SHARE to the end (always the last)."""
    if count < 2:
        return [1.0] * count
    return [0.0] + [FIRST_SHARE ** (1 - i / (count - 2)) for i in range(count - 1)] if count > 2 else [0.0, 1.0]


def planned_steps(count: int, total_steps: int) -> list[int]:
    """`count` distinct steps at `planned_fractions` of `total_steps` (bumped apart where they would coincide; a run
    of fewer steps than snapshots keeps one per step)."""
    steps: list[int] = []
    for fraction in planned_fractions(min(count, total_steps + 1)):
        steps.append(max(round(fraction * total_steps), steps[-1] + 1 if steps else 0))
    if steps:
        steps[-1] = total_steps
    return steps


@torch.no_grad()
def top1_guesses(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The top-1 token at every masked position of (inputs, labels), in full fp32."""
    guesses = []
    for start in range(0, len(inputs), batch_size):
        block_inputs, block_labels = inputs[start:start + batch_size], labels[start:start + batch_size]
        hidden = model.bert(input_ids=block_inputs).last_hidden_state[block_labels != IGNORE_INDEX]
        guesses.append(model.cls(hidden).argmax(dim=-1))
    return torch.cat(guesses)


@dataclass
class SeededStart:
    """A from-scratch run's random start: what rebuilds it, and what the manifest records of it."""

    tokenizer: object
    seed: int
    init: str

    def rebuild(self) -> nn.Module:
        return seeded_start(self.tokenizer, self.seed, self.init)


class SnapshotRecorder:
    """Takes one run's snapshots.

    model: the model being trained (read, never changed). check: validation (inputs, labels) to measure a format's
    agreement on. start_step: the step training starts (or resumes) from. planned_total: the run's steps, or None
    under a time budget (then `progress` shares of the time place the snapshots). steps_per_epoch: for the entries'
    epochs. writes: whether this process writes (the main one). seeded: a from-scratch run's random start (None: a
    fine-tuned run, whose start is stored like any other snapshot).
    """

    def __init__(self, run_dir: Path, count: int, model: nn.Module, check: tuple[torch.Tensor, torch.Tensor], *,
                 start_step: int, planned_total: int | None, steps_per_epoch: int, writes: bool,
                 seeded: SeededStart | None):
        self.run_dir, self.count, self.model, self.steps_per_epoch = Path(run_dir), count, model, steps_per_epoch
        self.seeded = seeded
        self.enabled = count > 0 and writes
        self.entries = read_manifest(self.run_dir) if count else []
        if any(e["step"] > start_step for e in self.entries):  # taken after the checkpoint resumed from
            self.entries = [e for e in self.entries if e["step"] <= start_step]
            if self.enabled:
                write_manifest(self.run_dir, self.entries)
        total = planned_total
        shares = planned_fractions(count) if total is None else [s / total for s in planned_steps(count, total)]
        reached = max((e["step"] for e in self.entries), default=-1) / total if total else -1  # resumed runs
        self.targets = [share for share in shares[:-1] if share > reached]  # the last one is finish()'s
        self.last_validation: tuple[int, float] | None = None
        if not self.enabled:
            return
        self.skeleton = copy.deepcopy(model).eval()  # decodes candidate formats to measure their agreement
        self.check = (check[0][:CHECK_BLOCKS], check[1][:CHECK_BLOCKS])
        snapshot_dir(self.run_dir).mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.run_dir)  # a write a crash interrupted
        if self.entries and self.entries[-1]["format"] == RUN_WEIGHTS:
            # resumed: the run folder's weights are about to change, so the snapshot that was them is written out
            last = self.entries.pop()
            self.write(last["step"], last["epoch"], last["valid_loss"], last.get("reason", "stopped"))

    def wanted(self, step: int, progress: float) -> str | None:
        """Why a snapshot is due after `step` (a validation must come first), or None. `progress` is the share of the
        schedule done: step / total steps, or elapsed / budget for a --time-budget run."""
        if not any(t <= progress for t in self.targets):
            return None
        self.targets = [t for t in self.targets if t > progress]
        if any(e["step"] == step for e in self.entries):
            return None
        return "random start" if step == 0 else "log-spaced"

    def on_validation(self, step: int, loss: float, wanted: str | None = None) -> None:
        """Every recorded validation: the first one below the plateau gets a snapshot of its own, and so does one the
        recorder `wanted`. (A validation that a Stop abandoned, or that diverged, is not reported: no snapshot.)"""
        self.last_validation = (step, loss)
        if self.count and step > 0 and loss <= PLATEAU_EXIT_LOSS and not any(
                e["valid_loss"] <= PLATEAU_EXIT_LOSS for e in self.entries):
            wanted = "left the plateau"
        if wanted and self.enabled and not any(e["step"] == step for e in self.entries):
            self.write(step, step / self.steps_per_epoch, loss, wanted)

    def finish(self, step: int, final: bool) -> None:
        """The run's final (or stopped) checkpoint is the last snapshot: listed, not copied. Called just before
        that checkpoint is saved, so that its card lists it (read_manifest ignores it until the save lands)."""
        if not self.enabled or any(e["step"] == step for e in self.entries):
            return
        if self.last_validation is None or self.last_validation[0] != step:
            return  # no validation point at this step (the trainer evaluates before its last save)
        self.entries.append({"step": step, "epoch": step / self.steps_per_epoch,
                             "valid_loss": self.last_validation[1], "file": None, "format": RUN_WEIGHTS,
                             "top1_agreement": None, "bytes": 0, "reason": "final" if final else "stopped"})
        write_manifest(self.run_dir, self.entries)

    def is_seeded_start(self, step: int) -> bool:
        if step != 0 or self.seeded is None:
            return False
        rebuilt = unique_tensors(self.seeded.rebuild())
        return all(torch.equal(rebuilt[name], tensor.cpu()) for name, tensor in unique_tensors(self.model).items())

    @torch.no_grad()
    def write(self, step: int, epoch: float, valid_loss: float, reason: str) -> None:
        if self.is_seeded_start(step):
            self.entries.append({"step": 0, "epoch": 0.0, "valid_loss": valid_loss, "file": None, "format": SEED,
                                 "top1_agreement": 1.0, "bytes": 0, "reason": reason, "seed": self.seeded.seed,
                                 "init": self.seeded.init})
            write_manifest(self.run_dir, self.entries)
            return
        was_training = self.model.training
        self.model.eval()
        reference = top1_guesses(self.model, *self.check)
        for fmt in FORMATS:
            tensors = encode_model(self.model, fmt)
            load_encoded(self.skeleton, tensors, fmt)
            agreement = (top1_guesses(self.skeleton, *self.check) == reference).float().mean().item()
            if agreement >= FAITHFUL_TOP1:
                break
        self.model.train(was_training)
        path = write_snapshot(self.run_dir, step, tensors, fmt)
        self.entries.append({"step": step, "epoch": epoch, "valid_loss": valid_loss, "file": path.name, "format": fmt,
                             "top1_agreement": agreement, "bytes": path.stat().st_size, "reason": reason})
        write_manifest(self.run_dir, self.entries)
