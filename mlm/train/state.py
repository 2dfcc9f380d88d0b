"""What `--resume` needs beyond the weights: the optimizer's state and the random-number generators, in safetensors.

Resuming restores the generators (masks, dropout) along with the optimizer, so a resumed run repeats an
uninterrupted one bit for bit on the CPU. Nothing is ever loaded from a pickle: the optimizer's tensors are
safetensors entries named `<parameter index>.<key>`, its parameter groups JSON in the file's metadata. The folder
(training_state/ of a run, mlm/runs/layout.py) is published with the rest of the checkpoint (mlm/runs/manifest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mlm.errors import UserError
from mlm.fast.adamw import FusedAdamW
from mlm.runs.layout import OPTIMIZER_FILE, RNG_FILE, STATE_DIR, STATE_FILE


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
    save_file(tensors, folder / OPTIMIZER_FILE, metadata={"param_groups": json.dumps(groups)})
    save_file({name: value.cpu().contiguous() for name, value in rng.items()}, folder / RNG_FILE)
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def load_training_state(run_dir: Path, optimizer: FusedAdamW) -> dict:
    folder = run_dir / STATE_DIR
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        with safe_open(folder / OPTIMIZER_FILE, "pt") as handle:
            groups = json.loads(handle.metadata()["param_groups"])
        tensors = load_file(folder / OPTIMIZER_FILE)
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
