"""What the Train tab asks a training job to do, as the training CLI's arguments (no process, no Gradio here).

Checked as far as the form's own fields go (the preset, the data source and its folder or file); the trainer's
own checks run on the arguments before a job starts (mlm/ui/jobs/jobs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlm.config import PRESETS
from mlm.errors import UserError

DATA_SOURCES = ("hub", "folder", "file")


@dataclass
class TrainRequest:
    """What the Train tab's form asks for; `arguments` turns it into the CLI's arguments."""
    preset: str = "scratch"
    data_source: str = "folder"  # hub | folder | file
    data_dir: str = ""
    text_file: str = ""
    epochs: float | None = 1.0  # None keeps the preset's, like every optional field below
    lr: float | None = None
    batch_size: int | None = None
    max_train_blocks: int | None = None
    max_minutes: float | None = None
    max_eval_blocks: int | None = None  # validation is the slow part of a CPU demo
    time_budget: float | None = None  # minutes from Start; the LR schedule decays to 0 by then (mlm/train/schedule.py)
    snapshots: int | None = None  # weight snapshots for the Time-lapse tab (mlm/train/snapshots.py)
    log_every: int = 10  # a live demo wants a point every few seconds, not the CLI's 50 steps
    name: str = ""  # the run folder's name; empty: <preset>-<date>-<time>

    def arguments(self, output_dir: Path) -> list[str]:
        if self.preset not in PRESETS:
            raise UserError(f"Unknown preset '{self.preset}'; choose one of {', '.join(PRESETS)}.")
        arguments = ["--preset", self.preset, "--output-dir", str(output_dir), "--log-every", str(self.log_every)]
        if self.data_source == "folder":
            if not self.data_dir or not Path(self.data_dir).is_dir():
                raise UserError(f"The data folder '{self.data_dir}' does not exist.")
            arguments += ["--data-dir", self.data_dir]
        elif self.data_source == "file":
            if not self.text_file or not Path(self.text_file).is_file():
                raise UserError("Upload a plain-text file to train on first.")
            arguments += ["--text-file", self.text_file]
        elif self.data_source != "hub":
            raise UserError(f"Unknown data source '{self.data_source}'; choose one of {', '.join(DATA_SOURCES)}.")
        optional = {"--epochs": self.epochs, "--lr": self.lr, "--batch-size": self.batch_size, "--max-train-blocks": self.max_train_blocks,
                    "--max-minutes": self.max_minutes, "--max-eval-blocks": self.max_eval_blocks,
                    "--time-budget": self.time_budget, "--snapshots": self.snapshots}
        for flag, value in optional.items():
            if value is not None:
                arguments += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return arguments
