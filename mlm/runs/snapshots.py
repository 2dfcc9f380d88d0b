"""The storage of a run's weight snapshots (the time-lapse of how its guesses formed): formats, files, manifest.

Per run folder (names in mlm/runs/layout.py):
    snapshots/manifest.json          {"snapshots": [{"step", "epoch", "valid_loss", "file", "format",
                                                      "top1_agreement", "bytes", "reason", ...}]}
    snapshots/step-0000123.safetensors

Formats, smallest first: int4 and int8 (a weight matrix's values with an fp16 scale per GROUP values of a row;
vectors are tiny and stay fp16), then fp16. Two formats store nothing: `seed` (a from-scratch run's random start,
rebuilt from the entry's seed and init by mlm.model.build.seeded_start) and `run` (the run folder's own
checkpoint, `"file": null`). The tied output layer is the word-embedding matrix, stored once. Which format a
snapshot gets, and when one is taken, is the trainer's business (mlm/train/snapshots.py); this module only reads
and writes, so the server (mlm/serve/timelapse.py) reads snapshots without importing the trainer.

Atomic like checkpoints: a snapshot file is written by the one atomic writer (mlm/runs/atomic.py) and only then
listed in the manifest (itself replaced atomically). A crash leaves the manifest listing complete files only; a
file it does not list is ignored, and a temporary left by a kill is removed by the next writer
(`remove_temporaries`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mlm.errors import UserError
from mlm.runs.atomic import write_atomic, write_text_atomic
from mlm.runs.layout import SNAPSHOT_DIR, SNAPSHOT_MANIFEST, STATE_DIR, STATE_FILE

FAITHFUL_TOP1 = 0.98  # a compact format is kept only if its top-1 guesses agree this often with full precision
GROUP = 32  # values sharing one scale, along a row
FORMATS = ("int4", "int8", "fp16")  # smallest first: the first faithful one is kept
RUN_WEIGHTS = "run"  # the format of the snapshot that is the run folder's own checkpoint
SEED = "seed"  # the format of a from-scratch run's random start: rebuilt from its seed


# ----------------------------------------------------------------------------------------------------------------
# Compact tensors


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


# ----------------------------------------------------------------------------------------------------------------
# Files and the manifest


def snapshot_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR


def read_manifest(run_dir: str | Path) -> list[dict]:
    """The run's snapshots, oldest first ([] when it keeps none or the manifest is unreadable). The entry that is
    the run's own checkpoint is listed before that checkpoint is saved (so its card can list it): it counts only
    once the checkpoint in the folder is of its step."""
    path = snapshot_dir(run_dir) / SNAPSHOT_MANIFEST
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
    write_text_atomic(snapshot_dir(run_dir) / SNAPSHOT_MANIFEST, json.dumps({"snapshots": entries}, indent=1) + "\n")


def write_snapshot(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], fmt: str) -> Path:
    """The file of one encoded snapshot, written whole or not at all (list it in the manifest afterwards)."""
    path = snapshot_dir(run_dir) / f"step-{step:07d}.safetensors"
    cpu = {name: tensor.cpu() for name, tensor in tensors.items()}
    return write_atomic(path, lambda temporary: save_file(cpu, temporary, metadata={"format": fmt}))


def remove_temporaries(run_dir: Path) -> None:
    """Delete what a killed write left under a temporary name (never listed, so never read)."""
    for stale in snapshot_dir(run_dir).glob("*.tmp"):
        stale.unlink()


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
