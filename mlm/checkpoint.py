"""Run folders: atomic checkpoints, resumable optimizer state, metrics.jsonl and the model card.

A run folder is itself a `save_pretrained` checkpoint (the last one), with:
    metrics.jsonl        one JSON object per line; appended while training, so other processes can plot it live
    train_config.json    the TrainConfig that made it
    README.md            the model card
    training_state/      optimizer.safetensors + state.json: what `--resume` needs
    best/                the checkpoint with the lowest validation loss so far

Nothing is ever half-written: each checkpoint is first written completely to a staging folder, then moved into
place file by file with os.replace (atomic on POSIX). `training_state/state.json` moves last and names the step,
so a resume never starts from a state newer than the weights beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mlm.hub import UserError

STATE_DIR = "training_state"
BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"


def write_text_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.chmod(handle.name, 0o644)  # tempfile creates 0600; a checkpoint is meant to be shared
    os.replace(handle.name, path)


def publish(staging: Path, target: Path) -> None:
    """Move every file of `staging` into `target` (os.replace each), `training_state/state.json` last."""
    files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == "state.json")
    for source in files:
        destination = target / source.relative_to(staging)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, destination)
    shutil.rmtree(staging, ignore_errors=True)


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
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=run_dir))
    staging.chmod(0o755)  # mkdtemp creates 0700; best/ is this very folder once swapped in
    return staging


# ----------------------------------------------------------------------------------------------------------------
# Optimizer state as safetensors (no pickles are ever loaded)


def save_training_state(folder: Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    saved = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": value.detach().cpu().contiguous()
        for index, entries in saved["state"].items() for key, value in entries.items()
    }
    groups = [{k: v for k, v in group.items() if k != "lr"} for group in saved["param_groups"]]
    save_file(tensors, folder / "optimizer.safetensors", metadata={"param_groups": json.dumps(groups)})
    (folder / "state.json").write_text(json.dumps(state, indent=2) + "\n")


def load_training_state(run_dir: Path, optimizer: torch.optim.Optimizer) -> dict:
    folder = run_dir / STATE_DIR
    try:
        state = json.loads((folder / "state.json").read_text())
        with safe_open(folder / "optimizer.safetensors", "pt") as handle:
            groups = json.loads(handle.metadata()["param_groups"])
        tensors = load_file(folder / "optimizer.safetensors")
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot resume from {run_dir}: unreadable {STATE_DIR} ({error})") from error
    per_param: dict[int, dict] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = tensor
    for group, current in zip(groups, optimizer.param_groups):
        group["lr"] = current["lr"]  # the schedule sets it every step; keep the live (tensor) value
    device = optimizer.param_groups[0]["params"][0].device
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    for entries in optimizer.state.values():  # fused AdamW keeps `step` on the parameters' device
        for key, value in entries.items():
            entries[key] = value.to(device)
    return state


# ----------------------------------------------------------------------------------------------------------------
# Metrics


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every complete line of metrics.jsonl (a line being written right now is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


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

Use: `transformers.pipeline("fill-mask", model=<this folder>)` (a LoRA folder loads through `mlm.model.load_model`).
"""
