"""Which process am I, and how do the processes of a run agree: accelerate's Accelerator when several run (torchrun,
`accelerate launch`) or for fp16's loss scaling; a one-process stand-in otherwise.

Why not always accelerate: importing it costs seconds on some machines (3.3 s of a 7.5 s start-up on the H200
image, most of it torch.distributed.fsdp, torch._dynamo and sympy compiled from source at every start: the image
keeps no bytecode), and a single process needs none of it: every reduction is the identity, there is no one to
wait for. The stand-in offers exactly the calls the trainer makes; `tests/test_train_imports.py` checks it against
the Accelerator of a single process.
"""

from __future__ import annotations

import contextlib
import os

import torch


class SingleProcess:
    """accelerate.Accelerator's interface as the trainer uses it, for a run of one process."""

    num_processes, process_index, is_main_process = 1, 0, True

    def __init__(self):
        on_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"}
        self.device = torch.device("cuda" if torch.cuda.is_available() and not on_cpu else "cpu")

    def main_process_first(self):
        return contextlib.nullcontext()

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def wait_for_everyone(self) -> None:
        pass

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def end_training(self) -> None:
        pass


def accelerator_for(mixed_precision: str):
    """The stand-in for one process without fp16; accelerate's Accelerator otherwise."""
    if mixed_precision != "fp16" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return SingleProcess()
    from accelerate import Accelerator

    return Accelerator(mixed_precision="fp16" if mixed_precision == "fp16" else "no")
