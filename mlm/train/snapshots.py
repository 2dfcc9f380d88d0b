"""Weight snapshots of a training run, for the time-lapse of how its guesses formed.

`--snapshots N` keeps N snapshots: the random start (step 0), then log-spaced points from 10% of the run to its
end (early training changes fastest), plus the first validation point that leaves the loss plateau near 6 (loss
<= 5.5), where the model starts to use the context. Each snapshot is taken at a validation point, so it carries
its validation loss.

Storage, per run folder:
    snapshots/manifest.json          [{"step", "epoch", "valid_loss", "file", "format", "top1_agreement", ...}]
    snapshots/step-0000123.safetensors

A snapshot is stored in the smallest format whose predictions stay faithful: the top-1 guess agrees with the
full-precision weights on at least 98% of the validation masks checked (recorded in the manifest and the model
card). The random start of a from-scratch run is rebuilt from its seed and init (nothing stored: `"format": "seed"`,
checked bit for bit when written); any other snapshot tries int4, then int8 (both with an fp16 scale per 32 values
of a row), then fp16. On the shipped 10.4M model int8 is what stays faithful (99.1% top-1 agreement; with one
scale per row 98.1%; int4 82%): 11 MB a snapshot. The tied output layer is the word-embedding matrix and is
stored once. The last snapshot is the run's own final checkpoint (`"file": null`), so it costs nothing and
predicts exactly as the run does; when a stopped run is resumed, that entry is first written out compactly, since
the run folder's weights are about to move on.

Atomic like checkpoints: a snapshot file is written under a temporary name and renamed, and only then listed in
the manifest (itself replaced atomically). A crash leaves the manifest listing complete files only; a file it
does not list is ignored, and its temporary name is cleaned up by the next writer.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mlm.runs.checkpoint import STATE_DIR, STATE_FILE, write_text_atomic
from mlm.data.corpus import IGNORE_INDEX
from mlm.errors import UserError
from mlm.model.build import scratch_bert

SNAPSHOT_DIR = "snapshots"
MANIFEST_FILE = "manifest.json"
FAITHFUL_TOP1 = 0.98
PLATEAU_EXIT_LOSS = 5.5  # the plateau sits near 6 (unigram frequencies); below 5.5 the model uses context
# The first log-spaced snapshot: after 2% of the steps (or of the time budget), early enough to catch the plateau
# even where the mimetic init leaves it at epoch 2 (`fast-long`: step 100 of 4,997, epoch 0.7), so `--snapshots 3`
# tells the story: random, plateau, leaving it (the extra snapshot at loss <= 5.5), final.
FIRST_SHARE = 0.02
CHECK_BLOCKS = 128  # validation blocks (about 2,400 masks) used to measure a compact format's agreement
GROUP = 32  # values sharing one scale, along a row
FORMATS = ("int4", "int8", "fp16")  # smallest first: the first faithful one is kept
RUN_WEIGHTS = "run"  # the format of the snapshot that is the run folder's own checkpoint
SEED = "seed"  # the format of a from-scratch run's random start: rebuilt from its seed


# ----------------------------------------------------------------------------------------------------------------
# When


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


# ----------------------------------------------------------------------------------------------------------------
# How: compact tensors


def encode(tensor: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """Parts of one tensor in `fmt` (keyed by suffix). Vectors are always fp16: they are tiny."""
    values = tensor.detach().float()
    if fmt == "fp16" or values.ndim != 2:
        return {"": values.half()}
    bits, group = (4 if fmt == "int4" else 8), GROUP
    rows, cols = values.shape
    grouped = F.pad(values, (0, (-cols) % group)).reshape(rows, -1, group)
    levels = 2 ** (bits - 1) - 1
    # the scale is rounded to fp16 before use, so decoding with the stored scale gives back exactly these levels
    scale = (grouped.abs().amax(dim=-1, keepdim=True) / levels).clamp_min(1e-7).half()
    q = torch.round(grouped / scale.float()).clamp(-levels, levels).to(torch.int8)
    if bits == 4:  # two values per byte
        nibbles = (q + 8).to(torch.uint8).reshape(rows, grouped.shape[1], group // 2, 2)
        q = nibbles[..., 0] | (nibbles[..., 1] << 4)
    return {".q": q.contiguous(), ".scale": scale.contiguous()}


def decode(parts: dict[str, torch.Tensor], fmt: str, shape: torch.Size) -> torch.Tensor:
    if "" in parts:
        return parts[""].float()
    q, scale = parts[".q"], parts[".scale"].float()
    if fmt == "int4":
        q = torch.stack([(q & 0x0F).to(torch.int8) - 8, (q >> 4).to(torch.int8) - 8], dim=-1).flatten(-2)
    rows, cols = shape
    return (q.float() * scale).reshape(rows, -1)[:, :cols]


def unique_tensors(model) -> dict[str, torch.Tensor]:
    """The model's state, each storage once (the tied output layer is the word-embedding matrix)."""
    seen, unique = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            unique[name] = tensor
    return unique


def encode_model(model, fmt: str) -> dict[str, torch.Tensor]:
    return {name + suffix: part for name, tensor in unique_tensors(model).items()
            for suffix, part in encode(tensor, fmt).items()}


@torch.no_grad()
def load_encoded(model, tensors: dict[str, torch.Tensor], fmt: str) -> None:
    """Decode a snapshot into `model` (same architecture) in place; tied weights follow their storage."""
    for name, target in unique_tensors(model).items():
        parts = {suffix: tensors[name + suffix] for suffix in ("", ".q", ".scale") if name + suffix in tensors}
        if not parts:
            raise UserError(f"the snapshot lacks {name}")
        target.copy_(decode({k: v.to(target.device) for k, v in parts.items()}, fmt, target.shape))


@torch.no_grad()
def top1_guesses(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The top-1 token at every masked position of (inputs, labels), in full fp32."""
    guesses = []
    for start in range(0, len(inputs), batch_size):
        block_inputs, block_labels = inputs[start:start + batch_size], labels[start:start + batch_size]
        hidden = model.bert(input_ids=block_inputs).last_hidden_state[block_labels != IGNORE_INDEX]
        guesses.append(model.cls(hidden).argmax(dim=-1))
    return torch.cat(guesses)


def seeded_start(tokenizer, seed: int, init: str = "bert"):
    """The from-scratch model exactly as the Trainer initialises it (seed, then build), leaving the RNG untouched.
    (The plain-torch model: its random start is bit for bit that of transformers' class, which older runs used.)"""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return scratch_bert(tokenizer, init=init).eval()


# ----------------------------------------------------------------------------------------------------------------
# The manifest


def snapshot_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR


def read_manifest(run_dir: str | Path) -> list[dict]:
    """The run's snapshots, oldest first ([] when it keeps none or the manifest is unreadable). The entry that is
    the run's own checkpoint is listed before that checkpoint is saved (so its card can list it): it counts only
    once the checkpoint in the folder is of its step."""
    path = snapshot_dir(run_dir) / MANIFEST_FILE
    try:
        entries = json.loads(path.read_text())["snapshots"]
        entries = sorted((e for e in entries if isinstance(e, dict) and "step" in e), key=lambda e: e["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if entries and entries[-1].get("format") == RUN_WEIGHTS and checkpoint_step(run_dir) not in (None, entries[-1]["step"]):
        entries.pop()
    return entries


def checkpoint_step(run_dir: str | Path) -> int | None:
    """The step of the checkpoint in the run folder (None where it does not say, as in an edited shipped copy)."""
    try:
        return json.loads((Path(run_dir) / STATE_DIR / STATE_FILE).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_manifest(run_dir: Path, entries: list[dict]) -> None:
    entries = sorted(entries, key=lambda e: e["step"])
    write_text_atomic(snapshot_dir(run_dir) / MANIFEST_FILE, json.dumps({"snapshots": entries}, indent=1) + "\n")


def read_snapshot(run_dir: str | Path, entry: dict) -> dict[str, torch.Tensor]:
    try:
        return load_file(snapshot_dir(run_dir) / entry["file"])
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot read the snapshot of step {entry.get('step')} in {run_dir}: {error}") from error


def storage_bytes(run_dir: str | Path) -> int:
    return sum(p.stat().st_size for p in snapshot_dir(run_dir).glob("*.safetensors"))


def card_section(run_dir: str | Path) -> str:
    """The model card's table of snapshots: when, how good, how stored, how faithful."""
    entries = read_manifest(run_dir)
    if not entries:
        return ""
    def agreement(entry):
        return "-" if entry.get("top1_agreement") is None else f"{100 * entry['top1_agreement']:.1f}%"

    rows = "\n".join(f"| {e['step']} | {e['epoch']:.2f} | {e['valid_loss']:.4f} | {e['format']} | {agreement(e)} | "
                     f"{e.get('bytes', 0) / 1e6:.2f} MB | {e.get('reason', '')} |" for e in entries)
    return (f"\n## Snapshots (time-lapse)\n\n{len(entries)} snapshots in `{SNAPSHOT_DIR}/`, "
            f"{storage_bytes(run_dir) / 1e6:.1f} MB in all. Each is stored in the smallest format whose top-1 guess "
            f"agrees with the full-precision weights on at least {FAITHFUL_TOP1:.0%} of the validation masks checked "
            f"(int4 or int8 with a scale per {GROUP} values of a row; the tied output layer stored once); "
            f"`run` is this folder's own checkpoint.\n\n"
            f"| step | epoch | valid loss | stored as | top-1 agreement | size | why |\n| --- | --- | --- | --- | --- | --- | --- |\n"
            f"{rows}\n")


# ----------------------------------------------------------------------------------------------------------------
# Writing, during training


class SnapshotRecorder:
    """Takes a run's snapshots; the Trainer calls `maybe_take` after each step and `finish` after its last save.

    `progress` is the share of the schedule done: step / total steps, or elapsed / budget for a --time-budget run.
    """

    def __init__(self, trainer, count: int):
        self.trainer, self.count = trainer, count
        self.run_dir = Path(trainer.config.output_dir)
        self.enabled = count > 0 and trainer.is_main
        self.entries = read_manifest(self.run_dir) if count else []
        if any(e["step"] > trainer.start_step for e in self.entries):  # taken after the checkpoint resumed from
            self.entries = [e for e in self.entries if e["step"] <= trainer.start_step]
            if self.enabled:
                write_manifest(self.run_dir, self.entries)
        total = trainer.lr_schedule.total_steps  # None under a time budget: shares of the time instead
        shares = planned_fractions(count) if total is None else [s / total for s in planned_steps(count, total)]
        reached = max((e["step"] for e in self.entries), default=-1) / total if total else -1  # resumed runs
        self.targets = [share for share in shares[:-1] if share > reached]  # the last one is finish()'s
        self.last_validation: tuple[int, float] | None = None
        if not self.enabled:
            return
        model = trainer.model
        self.skeleton = copy.deepcopy(model).eval()  # decodes candidate formats to measure their agreement
        inputs, labels = trainer.valid_inputs[:CHECK_BLOCKS], trainer.valid_labels[:CHECK_BLOCKS]
        self.check = (inputs, labels)
        snapshot_dir(self.run_dir).mkdir(parents=True, exist_ok=True)
        for stale in snapshot_dir(self.run_dir).glob("*.tmp"):  # a write a crash interrupted
            stale.unlink()
        if self.entries and self.entries[-1]["format"] == RUN_WEIGHTS:
            # resumed: the run folder's weights are about to change, so the snapshot that was them is written out
            last = self.entries.pop()
            self.write(last["step"], last["epoch"], last["valid_loss"], last.get("reason", "stopped"))

    def after_validation(self, step: int, loss: float) -> None:
        """Called by every evaluation: the first one below the plateau gets a snapshot of its own."""
        self.last_validation = (step, loss)
        if self.count and step > 0 and loss <= PLATEAU_EXIT_LOSS and not any(
                e["valid_loss"] <= PLATEAU_EXIT_LOSS for e in self.entries):
            self.take(step, "left the plateau")

    def maybe_take(self, step: int, progress: float) -> None:
        due = [t for t in self.targets if t <= progress]
        if not due:
            return
        self.targets = [t for t in self.targets if t > progress]
        if any(e["step"] == step for e in self.entries):
            return
        self.take(step, "random start" if step == 0 else "log-spaced")

    def take(self, step: int, reason: str) -> None:
        """A snapshot at a validation point (evaluating first unless one was just made at this step)."""
        if self.last_validation is None or self.last_validation[0] != step:
            self.trainer.evaluate(step)
            if any(e["step"] == step for e in self.entries):  # that evaluation left the plateau: already taken
                return
        validated = self.last_validation is not None and self.last_validation[0] == step
        if self.enabled and validated:  # a Stop abandons the validation under way: then there is no point to keep
            self.write(step, step / self.trainer.steps_per_epoch, self.last_validation[1], reason)

    def finish(self, step: int) -> None:
        """The run's final (or stopped) checkpoint is the last snapshot: listed, not copied. Called just before
        that checkpoint is saved, so that its card lists it (read_manifest ignores it until the save lands)."""
        if not self.enabled or any(e["step"] == step for e in self.entries):
            return
        if self.last_validation is None or self.last_validation[0] != step:
            return  # no validation point at this step (the trainer evaluates before its last save)
        reason = "final" if step >= self.trainer.total_steps else "stopped"
        self.entries.append({"step": step, "epoch": step / self.trainer.steps_per_epoch,
                             "valid_loss": self.last_validation[1], "file": None, "format": RUN_WEIGHTS,
                             "top1_agreement": None, "bytes": 0, "reason": reason})
        write_manifest(self.run_dir, self.entries)

    def is_seeded_start(self, step: int) -> bool:
        config = self.trainer.config
        if step != 0 or config.pretrained:
            return False
        rebuilt = unique_tensors(seeded_start(self.trainer.tokenizer, config.seed, config.init))
        return all(torch.equal(rebuilt[name], tensor.cpu()) for name, tensor in unique_tensors(self.trainer.model).items())

    @torch.no_grad()
    def write(self, step: int, epoch: float, valid_loss: float, reason: str) -> None:
        if self.is_seeded_start(step):
            self.entries.append({"step": 0, "epoch": 0.0, "valid_loss": valid_loss, "file": None, "format": SEED,
                                 "top1_agreement": 1.0, "bytes": 0, "reason": reason, "seed": self.trainer.config.seed,
                                 "init": self.trainer.config.init})
            write_manifest(self.run_dir, self.entries)
            return
        model = self.trainer.model
        was_training = model.training
        model.eval()
        reference = top1_guesses(model, *self.check)
        for fmt in FORMATS:
            tensors = encode_model(model, fmt)
            load_encoded(self.skeleton, tensors, fmt)
            agreement = (top1_guesses(self.skeleton, *self.check) == reference).float().mean().item()
            if agreement >= FAITHFUL_TOP1:
                break
        model.train(was_training)
        name = f"step-{step:07d}.safetensors"
        folder = snapshot_dir(self.run_dir)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=name, suffix=".tmp")
        os.close(handle)
        save_file({k: v.cpu() for k, v in tensors.items()}, temporary, metadata={"format": fmt})
        os.chmod(temporary, 0o644)
        os.replace(temporary, folder / name)
        self.entries.append({"step": step, "epoch": epoch, "valid_loss": valid_loss, "file": name, "format": fmt,
                             "top1_agreement": agreement, "bytes": (folder / name).stat().st_size, "reason": reason})
        write_manifest(self.run_dir, self.entries)

