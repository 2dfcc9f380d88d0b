"""Training jobs for the app: start `python -m mlm.train` as its own process, watch it, stop it, resume it.

The app never trains in its own process: a training job is a child process (under `accelerate launch` where
several GPUs exist), at a lower CPU priority (nice 10): requests come first, so on a 2-core machine inference
answers almost as fast while it trains (see benchmarks/app_results.md), yet training still gets a share of a machine
busy with something else. What it is doing is read from its run folder (mlm/ui/jobs/status.py). Stopping sends
SIGTERM, on which the trainer abandons a validation pass or finishes its step and writes a resumable checkpoint.

One job runs at a time, also across app restarts: a lock file in the checkpoints folder names the job's process,
so an app started while a job still runs (after a crash of the previous one) shows it and can stop it instead of
starting a second beside it; an app that is ended (SIGTERM, Ctrl-C, normal exit) stops its job first
(mlm/ui/jobs/shutdown.py). What a job is asked to train is a TrainRequest (mlm/ui/jobs/request.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mlm.runs.checkpoint import write_text_atomic
from mlm.config import config_from_args
from mlm.errors import DISK_ERRORS
from mlm.errors import UserError
from mlm.ui.jobs.shutdown import end_jobs_with_the_app
from mlm.ui.jobs.limits import check_text_file, check_training_bounds
from mlm.runs.progress import read_progress
from mlm.ui.jobs.status import LOG_FILE, RunStatus, run_status, saved_state
from mlm.ui.jobs.request import TrainRequest

PROJECT_DIR = Path(__file__).resolve().parent.parent  # where `python -m mlm.train` finds the package
LOCK_FILE = ".training-job.json"  # in the checkpoints folder: {"pid", "run_dir", "started_at"} of the running job
UPLOAD_DIR = "upload"  # in a run folder: its copy of an uploaded corpus and that corpus's datasets cache
TRAINING_NICENESS = 10
SHUTDOWN_WAIT_S = 8  # an app being ended waits this long for its job's checkpoint (Docker kills after 10 s)
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def launcher() -> list[str]:
    """The command that runs a module: plain python, or accelerate launch across several GPUs."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus), "-m"]
    return [sys.executable, "-m"]


def process_alive(pid: int, run_dir: Path) -> bool:
    """Whether `pid` is still the trainer of `run_dir` (not a finished one's zombie, nor a reused PID)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and "mlm.train.trainer" in command and str(run_dir) in command


class TrainingJobs:
    """At most one training process at a time, started into a new folder under `checkpoints_dir`."""

    def __init__(self, checkpoints_dir: str | Path):
        self.checkpoints_dir = Path(checkpoints_dir)
        self.process: subprocess.Popen | None = None  # None for a job adopted from an earlier app (not our child)
        self.pid: int | None = None
        self.run_dir: Path | None = None
        self.started_at: float | None = None
        self.stop_requested = False
        self.exit_code: int | None = None  # once the job ended
        self._lock = threading.Lock()
        self.adopt()
        end_jobs_with_the_app(self)

    # ------------------------------------------------------------------------------------------------------------
    # The lock file: which job runs, across app restarts

    @property
    def lock_path(self) -> Path:
        return self.checkpoints_dir / LOCK_FILE

    def adopt(self) -> None:
        """Take over the job named by the lock file if its process still runs; forget a stale lock."""
        try:
            lock = json.loads(self.lock_path.read_text())
            pid, run_dir, started_at = int(lock["pid"]), Path(lock["run_dir"]), float(lock["started_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if process_alive(pid, run_dir):
            self.pid, self.run_dir, self.started_at = pid, run_dir, started_at
        else:
            self.lock_path.unlink(missing_ok=True)

    def poll(self) -> int | None:
        """The job's exit code, None while it runs (an adopted job's: 0 if it said it was done, else 1)."""
        if self.exit_code is None and self.pid is not None:
            if self.process is not None:
                self.exit_code = self.process.poll()
            elif not process_alive(self.pid, self.run_dir):  # not our child: its exit code is gone
                self.exit_code = 0 if read_progress(self.run_dir).get("phase") == "done" else 1
            if self.exit_code is not None:
                self.ended()
        return self.exit_code

    def ended(self) -> None:
        """The job is over: release the lock; an uploaded corpus goes unless the run can still be resumed."""
        self.lock_path.unlink(missing_ok=True)
        if saved_state(self.run_dir).get("finished", True):
            shutil.rmtree(self.run_dir / UPLOAD_DIR, ignore_errors=True)

    def running(self) -> bool:
        return self.pid is not None and self.poll() is None

    # ------------------------------------------------------------------------------------------------------------
    # Start, resume, stop

    def new_run_dir(self, request: TrainRequest) -> Path:
        if request.name:
            if not RUN_NAME.fullmatch(request.name):
                raise UserError("A run name has letters, digits, '.', '-' or '_' (up to 64, not starting with '.').")
            if (self.checkpoints_dir / request.name).exists():
                raise UserError(f"A run named {request.name} already exists: choose another name.")
            return self.checkpoints_dir / request.name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir, suffix = self.checkpoints_dir / f"{request.preset}-{stamp}", 1
        while run_dir.exists():
            suffix += 1
            run_dir = self.checkpoints_dir / f"{request.preset}-{stamp}-{suffix}"
        return run_dir

    def start(self, request: TrainRequest) -> Path:
        with self._lock:
            self.refuse_if_running()
            check_training_bounds(request)
            if request.data_source == "file":
                check_text_file(request.text_file)
            run_dir = self.new_run_dir(request).resolve()
            arguments = request.arguments(run_dir)
            config_from_args(arguments)  # the trainer's own checks, answered now rather than from a failed process
            try:
                run_dir.mkdir(parents=True)
                if request.data_source == "file":  # its own copy, under a name datasets cannot take for a pattern
                    corpus = run_dir / UPLOAD_DIR / "corpus.txt"
                    corpus.parent.mkdir()
                    shutil.copyfile(request.text_file, corpus)
                    arguments[arguments.index("--text-file") + 1] = str(corpus)
            except OSError as error:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise disk_error(error) from error
            return self.launch(run_dir, arguments)

    def resume(self, run_dir: Path, max_minutes: float | None = None) -> Path:
        """Continue a stopped run in its own folder (optionally under a new minutes cap)."""
        with self._lock:
            self.refuse_if_running()
            state = saved_state(run_dir)
            if not state or state.get("finished"):
                raise UserError(f"{run_dir.name} has no resumable checkpoint"
                                f"{' (it finished)' if state.get('finished') else ''}.")
            arguments = ["--resume", str(run_dir)] + (["--max-minutes", f"{max_minutes:g}"] if max_minutes else [])
            config_from_args(arguments)
            return self.launch(run_dir, arguments)

    def refuse_if_running(self) -> None:
        if self.pid is None:
            self.adopt()  # another app on the same folder may have started one since
        if self.running():
            raise UserError(f"A training run is already going ({self.run_dir.name}): stop it or wait until it "
                            f"finishes. One run at a time keeps the machine responsive.")

    def launch(self, run_dir: Path, arguments: list[str]) -> Path:
        command = launcher() + ["mlm.train"] + arguments
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")]))}
        if (run_dir / UPLOAD_DIR).is_dir():  # an uploaded corpus's tokenized cache goes with it, not to ~/.cache
            env["HF_DATASETS_CACHE"] = str(run_dir / UPLOAD_DIR / "datasets-cache")
        try:
            with open(run_dir / LOG_FILE, "a") as log:
                log.write(" ".join(command) + "\n")
                log.flush()
                # In the app's own session: Linux shares the CPU fairly between sessions (autogroups), whatever
                # their priority, so a new session would undo the lower priority below.
                process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as error:
            raise disk_error(error) from error
        # Set before the child spawns any thread or worker (they inherit it); preexec_fn is unsafe in a threaded
        # server.
        os.setpriority(os.PRIO_PROCESS, process.pid, TRAINING_NICENESS)
        self.process, self.pid, self.run_dir, self.started_at = process, process.pid, run_dir, time.time()
        self.stop_requested, self.exit_code = False, None
        try:
            write_text_atomic(self.lock_path, json.dumps({"pid": self.pid, "run_dir": str(run_dir),
                                                          "started_at": self.started_at}) + "\n")
        except OSError:
            pass  # a read-only checkpoints folder: the job runs, only a restarted app would not find it
        return run_dir

    def stop(self) -> str:
        with self._lock:
            if not self.running():
                return "No training run is going."
            os.kill(self.pid, signal.SIGTERM)  # accelerate launch passes it on to every worker
            self.stop_requested = True
            return f"Stopping {self.run_dir.name}: it saves a resumable checkpoint within seconds."

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code once the job ended; raises subprocess.TimeoutExpired after `timeout_s`."""
        if self.process is not None:
            self.process.wait(timeout_s)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.pid is not None and self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout_s)
            time.sleep(0.1)
        return self.exit_code

    def shutdown(self) -> None:
        """The app is going: stop its job and give it a few seconds to write its checkpoint."""
        if self.stop() != "No training run is going.":
            try:
                self.wait(SHUTDOWN_WAIT_S)
            except subprocess.TimeoutExpired:
                pass  # it finishes on its own; the lock lets the next app find it

    def status(self) -> RunStatus:
        if self.pid is None:
            return RunStatus(None, "idle", "No training run started from this app yet.")
        return run_status(self.run_dir, self.poll(), self.stop_requested, self.started_at)


def disk_error(error: OSError) -> Exception:
    """A full or read-only disk as a one-line UserError; anything else as it is."""
    if error.errno in DISK_ERRORS:
        return UserError(f"Cannot write the run folder: {error.strerror}. Free some space or make the checkpoints "
                         f"folder writable.")
    return error
