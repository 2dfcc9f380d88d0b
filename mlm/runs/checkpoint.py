"""Run folders: checkpoints published whole, exact resume, tolerant metrics.jsonl and the model card.

A run folder is itself a `save_pretrained` checkpoint (the last one), with:
    checkpoint.json      the manifest: step, size and sha256 of every file of the checkpoint (mlm/runs/manifest.py)
    metrics.jsonl        one JSON object per line; appended while training, so other processes can plot it live
    train_config.json    the TrainConfig that made it
    README.md            the model card
    training_state/      optimizer.safetensors, rng.safetensors + state.json: what `--resume` needs
    best/                the checkpoint with the lowest validation loss so far
    diverged.json        only after the loss went non-finite: the run is not offered until resumed

A checkpoint is written to a staging folder and published as one unit (see mlm/runs/manifest.py): a kill at any moment
leaves the old checkpoint or the new one, and anything else is refused with one line. Resuming restores the
random-number generators (masks, dropout) along with the optimizer, so a resumed run repeats an uninterrupted one
bit for bit on the CPU. Nothing is ever loaded from a pickle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mlm.fast.adamw import FusedAdamW
from mlm.errors import UserError
from mlm.runs.manifest import MANIFEST_FILE, STAGING_PREFIX, publish, write_text_atomic  # noqa: F401 - publish: the API

STATE_DIR = "training_state"
BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"
STATE_FILE = "state.json"
RNG_FILE = "rng.safetensors"
DIVERGED_FILE = "diverged.json"
log = logging.getLogger(__name__)


def replace_folder(staging: Path, target: Path) -> None:
    """Swap a whole leaf folder (like best/) into place."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def staging_folder(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=run_dir))
    staging.chmod(0o755)  # mkdtemp creates 0700; best/ is this very folder once swapped in
    return staging


@contextlib.contextmanager
def staged(run_dir: Path):
    """A new staging folder, removed if writing it fails before its commit point (a full disk must not leave
    100 MB behind; a kill leaves it to the next run's `recover`)."""
    staging = staging_folder(run_dir)
    try:
        yield staging
    except BaseException:
        if not (staging / MANIFEST_FILE).is_file():
            shutil.rmtree(staging, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# Optimizer and random-number state as safetensors (no pickles are ever loaded)


def save_training_state(folder: Path, optimizer: FusedAdamW, state: dict,
                        rng: dict[str, torch.Tensor]) -> None:
    """`rng`: each generator's state as a (processes, n) uint8 tensor (see `rng_state`)."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": value.detach().cpu().contiguous()
        for index, entries in saved["state"].items() for key, value in entries.items()
    }
    groups = [{k: v for k, v in group.items() if k != "lr"} for group in saved["param_groups"]]
    save_file(tensors, folder / "optimizer.safetensors", metadata={"param_groups": json.dumps(groups)})
    save_file({name: value.cpu().contiguous() for name, value in rng.items()}, folder / RNG_FILE)
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def load_training_state(run_dir: Path, optimizer: FusedAdamW) -> dict:
    folder = run_dir / STATE_DIR
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        with safe_open(folder / "optimizer.safetensors", "pt") as handle:
            groups = json.loads(handle.metadata()["param_groups"])
        tensors = load_file(folder / "optimizer.safetensors")
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot resume from {run_dir}: unreadable {STATE_DIR} ({error})") from error
    per_param: dict[int, dict] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = tensor
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except (ValueError, IndexError) as error:
        raise UserError(f"cannot resume from {run_dir}: {error}") from error
    return state


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's generators that training draws from: masks and dropout (the data order is a function of
    the seed, the epoch and the step, so the step is its position)."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_state(run_dir: Path, device: torch.device, rank: int, processes: int) -> bool:
    """Set this process's generators as they were at the checkpoint. False if the checkpoint has none for this
    layout (written before RNG states were saved, or by another number of processes): training then goes on from
    the seed, correct but not identical to an uninterrupted run."""
    path = run_dir / STATE_DIR / RNG_FILE
    if not path.is_file():
        return False
    states = load_file(path)
    if any(len(state) != processes for state in states.values()) or ("cuda" in states) != (device.type == "cuda"):
        return False
    torch.set_rng_state(states["cpu"][rank].clone())
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"][rank].clone(), device)
    return True


# ----------------------------------------------------------------------------------------------------------------
# Metrics: appended live, read by the app while a run writes them, so every reader must survive any line

# Fields every reader relies on (train.py, runs.py status, the Curves tab), per split; a record without them (a line
# cut by a kill, a disk error) is skipped and reported, never passed on.
REQUIRED_FIELDS = {"step": int, "epoch": (int, float), "split": str, "loss": (int, float), "total_steps": int}
SPLIT_FIELDS = {"train": ("tokens_per_s", "elapsed_s"), "valid": ("perplexity", "top1", "top5")}
_reported: set[tuple[str, int, bytes]] = set()


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def record_problem(record) -> str | None:
    """Why a parsed metrics line is unusable, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for name, kind in REQUIRED_FIELDS.items():
        value = record.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"no valid '{name}'"
    numbers = ["loss", "epoch", *SPLIT_FIELDS.get(record["split"], ())]
    if not all(isinstance(record.get(n), (int, float)) and math.isfinite(record[n]) for n in numbers):
        return "a missing or non-finite number"
    return None


def read_metrics_checked(run_dir: str | Path) -> tuple[list[dict], list[tuple[int, str]]]:
    """(usable records, [(line number, why)] of damaged lines). A last line without its newline is being written
    right now (or was cut by a kill): it is left out and not counted as damaged."""
    path = Path(run_dir) / METRICS_FILE
    try:
        lines = path.read_bytes().split(b"\n")[:-1]  # the piece after the last newline is unfinished
    except OSError:
        return [], []
    records, damaged = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            problem = record_problem(record)
        except (UnicodeDecodeError, ValueError, RecursionError):
            problem = "not valid JSON"
        if problem:
            damaged.append((number, problem))
            if (str(path), number, line) not in _reported:  # once, not at every refresh of every page
                _reported.add((str(path), number, line))
                log.warning("%s line %d skipped: %s", path, number, problem)
        else:
            records.append(record)
    return records, damaged


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every usable record of metrics.jsonl; damaged lines are skipped (and logged once)."""
    return read_metrics_checked(run_dir)[0]


def truncate_metrics(run_dir: Path, step: int) -> list[dict]:
    """Keep only the records up to `step` (those a resume from that step will not write again) and drop damaged
    lines; the file is replaced in one rename. Returns the records kept."""
    records, _ = read_metrics_checked(run_dir)
    kept = [r for r in records if r["step"] <= step]
    if (run_dir / METRICS_FILE).exists():
        write_text_atomic(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


# ----------------------------------------------------------------------------------------------------------------
# Model card


def model_card(title: str, description: str, config: dict, metrics: list[dict], command: str, machine: str) -> str:
    valid = [m for m in metrics if m.get("split") == "valid"]
    train = [m for m in metrics if m.get("split") == "train"]
    final = valid[-1] if valid else {}
    rows = "\n".join(
        f"| {m['step']} | {m['epoch']:.2f} | {m['loss']:.4f} | {m['perplexity']:.1f} | {m['top1']:.3f} | {m['top5']:.3f} |"
        for m in valid
    )
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in config.items() if v not in (None, [], ""))
    elapsed = train[-1].get("elapsed_s") if train else None
    return f"""---
library_name: transformers
pipeline_tag: fill-mask
tags: [bert, masked-lm, wikitext]
---
# {title}

{description}

- **Command**: `{command}`
- **Machine**: {machine}
- **Training time**: {f'{elapsed:.1f} s' if elapsed is not None else 'n/a'} (training steps only; start-up and evaluations excluded)
- **Final validation** (15% fixed masks): loss {final.get('loss', float('nan')):.4f}, perplexity {final.get('perplexity', float('nan')):.1f}, top-1 {final.get('top1', float('nan')):.3f}, top-5 {final.get('top5', float('nan')):.3f}

## Validation curve

| step | epoch | loss | perplexity | top-1 | top-5 |
| --- | --- | --- | --- | --- | --- |
{rows}

## Settings

| setting | value |
| --- | --- |
{settings}

Use: `transformers.pipeline("fill-mask", model=<this folder>)` (a LoRA folder loads through `mlm.model.build.load_model`).
"""
