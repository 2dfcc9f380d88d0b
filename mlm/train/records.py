"""What the trainer writes to metrics.jsonl (mlm/runs/metrics.py reads it back) and how it measures a training
interval: a training record at every log point, a validation record per pass, each stamped with `wall_s`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from mlm.runs.metrics import append_metrics


class MetricsLog:
    """Appends a run's records (only the main process of several writes). `wall_s`: seconds since `created`, when
    the command's Trainer was made (start-up included)."""

    def __init__(self, run_dir: Path, enabled: bool, device: torch.device, created: float):
        self.run_dir, self.enabled, self.device, self.created = run_dir, enabled, device, created

    def append(self, record: dict) -> None:
        if self.enabled:
            append_metrics(self.run_dir, {**record, "wall_s": time.monotonic() - self.created})

    def train(self, record: dict, mask_rate: float | None) -> None:
        """A training record, with the masking rate where it moves along a schedule and the GPU's peak memory."""
        extra = {} if mask_rate is None else {"mask_rate": mask_rate}
        if self.device.type == "cuda":
            extra["max_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.append({**record, **extra})


class Interval:
    """The steps since the last log point. Their summed loss stays on the device until `mean_loss` reads it (the
    loop's only sync); their time counts training only: evaluations and saves run `paused`."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.steps, self.started, self.train_seconds = 0, time.perf_counter(), 0.0

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.steps += 1

    def mean_loss(self, accelerator) -> float:
        """The interval's mean loss over every process."""
        return (accelerator.reduce(self.loss_sum, "mean") / self.steps).item()

    def lap(self) -> float:
        """Seconds of training in this interval (added to `train_seconds`, the run's training time)."""
        seconds = time.perf_counter() - self.started
        self.train_seconds += seconds
        return seconds

    def restart(self) -> None:
        self.loss_sum.zero_()
        self.steps, self.started = 0, time.perf_counter()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.started += time.perf_counter() - began
