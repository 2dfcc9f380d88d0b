"""Bounds on what a training form may ask for, checked against this machine before a job starts.

A public Space serves a whole class, so one visitor (where the operator turned training on) must not be able to
exhaust its memory, disk or CPU: the batch size is held to what the memory can take, the number of epochs is
bounded, a minutes cap is required there (it bounds the whole job, data preparation included: see mlm/train/trainer.py),
and an uploaded corpus must be a non-empty UTF-8 text file under a size limit.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlm.config import PRESETS
from mlm.errors import UserError

MAX_EPOCHS = 100
DEFAULT_MAX_UPLOAD_MB = 20  # WikiText-2's training text is 11 MB
DEFAULT_SPACE_MAX_MINUTES = 30
# Training memory per sequence of 128 tokens (activations and their gradients): the from-scratch model used 9.3 GB at
# batch 512 on the CPU (18 MB each); fine-tuning is counted as bert-base, 12 layers of 768 against 3 of 256.
SEQUENCE_BYTES = {"scratch": 18e6, "fast": 18e6, "finetune": 18e6 * (12 * 768) / (3 * 256)}
MEMORY_SHARE = 0.5  # of the memory available now: the app and its models keep the rest


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def max_upload_bytes() -> int:
    return int(float(os.environ.get("MLM_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB)) * 1e6)


def max_minutes_allowed() -> float | None:
    """The longest minutes cap a form may ask for: MLM_MAX_TRAIN_MINUTES, 30 on a Space by default, else none."""
    value = os.environ.get("MLM_MAX_TRAIN_MINUTES")
    return float(value) if value else (DEFAULT_SPACE_MAX_MINUTES if on_space() else None)


def available_memory_bytes() -> int:
    """Free GPU memory where training would use a GPU, else the kernel's MemAvailable."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def max_batch_size(preset: str, block_size: int = 128) -> int:
    per_sequence = SEQUENCE_BYTES.get(preset, SEQUENCE_BYTES["finetune"]) * block_size / 128
    return max(1, int(MEMORY_SHARE * available_memory_bytes() / per_sequence))


def check_training_bounds(request) -> None:
    """A TrainRequest's numbers against this machine's limits (UserError, one line, says which and why)."""
    batch_size = request.batch_size or PRESETS.get(request.preset, {}).get("batch_size", 8)
    largest = max_batch_size(request.preset)
    if batch_size > largest:
        raise UserError(f"Batch size {batch_size} needs about {batch_size * SEQUENCE_BYTES.get(request.preset, 0) / 1e9:.1f} GB; "
                        f"this machine has room for at most {largest}.")
    if request.epochs is not None and request.epochs > MAX_EPOCHS:
        raise UserError(f"At most {MAX_EPOCHS} epochs.")
    longest = max_minutes_allowed()
    if longest is not None and (request.max_minutes is None or request.max_minutes > longest):
        raise UserError(f"Here a run needs a minutes cap of at most {longest:g}.")


def check_text_file(path: str) -> None:
    """An uploaded corpus: present, not empty, not too large, UTF-8, with at least two non-blank lines."""
    file = Path(path or "")
    if not path or not file.is_file():
        raise UserError("Upload a plain-text file to train on first.")
    size, limit = file.stat().st_size, max_upload_bytes()
    if size > limit:
        raise UserError(f"The file is {round(size / 1e6, 3):g} MB; the limit is {round(limit / 1e6, 3):g} MB.")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"The file is not UTF-8 text (byte {error.object[error.start]:#x} at position {error.start}): "
                        f"save it as UTF-8 plain text.") from error
    if not text.strip():
        raise UserError("The file is empty.")
    if sum(1 for line in text.splitlines() if line.strip()) < 2:
        raise UserError("The file needs at least two non-blank lines (the last 10% are held out for validation).")
