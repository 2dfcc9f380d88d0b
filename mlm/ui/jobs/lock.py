"""The app's lock file: which training job runs, across app restarts and between apps on one checkpoints folder.

The lock (mlm/runs/layout.py's LOCK_FILE, beside the run folders) names the job's process, its run folder and when
it started. An app that finds a lock whose process still runs shows that job and can stop it instead of starting a
second one beside it; a lock whose process is gone is stale and removed.

A lock that exists but cannot be read as one (a disk error, a hand edit, a folder in its place) is taken as held by
an unknown job, and nothing starts until a person removes it. The alternative, guessing from the process table
whether some trainer still uses the folder, can be wrong both ways (a trainer started by hand may name its folder
by a relative path; another process may name the folder for its own reasons); a wrong "free" is two trainings on
one machine and one checkpoints folder, a wrong "held" costs one `rm`. The lock is written in one rename
(mlm/runs/atomic.py), so a crash never leaves a torn one behind: a corrupt lock is rare and worth a look.

A lock that cannot be written is an error too: a job nobody else can see would let the next app start a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from mlm.errors import UserError
from mlm.runs.atomic import write_text_atomic


class Holder(NamedTuple):
    """The job a lock file names."""

    pid: int
    run_dir: Path
    started_at: float


def process_alive(pid: int, run_dir: Path) -> bool:
    """Whether `pid` is still the trainer of `run_dir` (not a finished one's zombie, nor a reused PID)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and "mlm.train" in command and str(run_dir) in command


class JobLock:
    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> Holder | None:
        """The job the lock names, None without a lock. UserError (one line, saying how to clear it) for a lock
        that exists but cannot be read: see the module's docstring for why that is taken as held."""
        try:
            lock = json.loads(self.path.read_text())
            return Holder(int(lock["pid"]), Path(lock["run_dir"]), float(lock["started_at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            why = error.strerror if isinstance(error, OSError) and error.strerror else "not a lock this app wrote"
            raise UserError(f"The lock file {self.path} is unreadable ({why}), so another training run may be going: "
                            f"if none is, delete that file and start again.") from error

    def live_holder(self) -> Holder | None:
        """The job the lock names if its process still runs; a stale lock is removed. UserError as `read`."""
        holder = self.read()
        if holder is not None and not process_alive(holder.pid, holder.run_dir):
            self.path.unlink(missing_ok=True)
            return None
        return holder

    def write(self, holder: Holder) -> None:
        """UserError (one line) if the lock cannot be written; the caller then stops its job."""
        try:
            write_text_atomic(self.path, json.dumps({"pid": holder.pid, "run_dir": str(holder.run_dir),
                                                     "started_at": holder.started_at}) + "\n")
        except OSError as error:
            raise UserError(f"Cannot write the lock file {self.path} ({error.strerror or type(error).__name__}): "
                            f"the training run was not started. Make the checkpoints folder writable.") from error

    def release(self, pid: int) -> None:
        """Remove the lock if it still names `pid` (another app may have started a job since this one's ended; an
        unreadable lock stays for a person to look at)."""
        try:
            holder = self.read()
        except UserError:
            return
        if holder is not None and holder.pid == pid:
            self.path.unlink(missing_ok=True)
