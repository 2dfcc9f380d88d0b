"""Training jobs for the app: start `python -m mlm.train` as its own process, watch it, stop it, resume it.

The app never trains in its own process: a training job is a child process (under `accelerate launch` where
several GPUs exist), at a lower CPU priority (nice 10): requests come first, so on a 2-core machine inference
answers almost as fast while it trains (benchmarks/records/2026-11-29_cpu_app-latency), yet training still gets a
share of a machine busy with something else. What it is doing is read from its run folder (mlm/ui/jobs/status.py).
Stopping sends SIGTERM, on which the trainer abandons a validation pass or finishes its step and writes a resumable
checkpoint.

One job runs at a time, also across app restarts: a lock file in the checkpoints folder names the job's process
(mlm/ui/jobs/lock.py), so an app started while a job still runs (after a crash of the previous one) shows it and
can stop it instead of starting a second beside it; an app that is ended (SIGTERM, Ctrl-C, normal exit) stops its
job first (mlm/ui/jobs/shutdown.py). What a job is asked to train is a TrainRequest (mlm/ui/jobs/request.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mlm.config import config_from_args
from mlm.errors import DISK_ERRORS, UserError
from mlm.runs.layout import LOCK_FILE, LOG_FILE, UPLOAD_DIR
from mlm.runs.progress import read_progress
from mlm.ui.jobs.limits import check_text_file, check_training_bounds
from mlm.ui.jobs.lock import Holder, JobLock, process_alive
from mlm.ui.jobs.request import TrainRequest
from mlm.ui.jobs.shutdown import end_jobs_with_the_app
from mlm.ui.jobs.status import RunStatus, run_status, saved_state

PROJECT_DIR = Path(__file__).resolve().parents[3]  # the repository: where `python -m mlm.train` finds the package
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


class TrainingJobs:
    """At most one training process at a time, started into a new folder under `checkpoints_dir`. `lock`: where
    the running job is recorded, by default the lock file in `checkpoints_dir`."""

    def __init__(self, checkpoints_dir: str | Path, lock: JobLock | None = None):
        self.checkpoints_dir = Path(checkpoints_dir)
        self.lock = lock or JobLock(self.checkpoints_dir / LOCK_FILE)
        self.lock_problem: str | None = None  # an unreadable lock file's one-line message: nothing starts meanwhile
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

    def adopt(self) -> None:
        """Take over the job the lock file names if its process still runs (a stale lock is removed); remember an
        unreadable lock's message, which `refuse_if_running` gives until a person removes the file."""
        try:
            holder = self.lock.live_holder()
        except UserError as error:
            self.lock_problem = str(error)
            return
        self.lock_problem = None
        if holder is not None and holder.pid != self.pid:  # not our child: its exit code will not be ours to read
            self.process, self.pid, self.run_dir, self.started_at = None, *holder
            self.stop_requested, self.exit_code = False, None

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
        self.lock.release(self.pid)
        if saved_state(self.run_dir).get("finished", True):
            shutil.rmtree(self.run_dir / UPLOAD_DIR, ignore_errors=True)

    def running(self) -> bool:
        return self.pid is not None and self.poll() is None

    # ------------------------------------------------------------------------------------------------------------
    # Start, resume, stop

    def start(self, request: TrainRequest) -> Path:
        with self._lock:
            self.refuse_if_running()
            check_training_bounds(request)
            if request.data_source == "file":
                check_text_file(request.text_file)
            run_dir = new_run_dir(self.checkpoints_dir, request).resolve()
            arguments = request.arguments(run_dir)
            config_from_args(arguments)  # the trainer's own checks, answered now rather than from a failed process
            make_run_dir(run_dir, request, arguments)
            try:
                return self.launch(run_dir, arguments)
            except UserError:
                shutil.rmtree(run_dir, ignore_errors=True)  # its own new folder: nothing was started in it
                raise

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
        if not self.running():
            self.adopt()  # another app on the same folder may have started one since
            if self.lock_problem:
                raise UserError(self.lock_problem)
        if self.running():
            raise UserError(f"A training run is already going ({self.run_dir.name}): stop it or wait until it "
                            f"finishes. One run at a time keeps the machine responsive.")

    def launch(self, run_dir: Path, arguments: list[str]) -> Path:
        process = spawn_trainer(run_dir, arguments)
        started_at = time.time()
        try:
            self.lock.write(Holder(process.pid, run_dir, started_at))
        except UserError:  # a job no other app could see; a kill at any moment leaves its checkpoint whole
            process.kill()
            process.wait()
            raise
        self.process, self.pid, self.run_dir, self.started_at = process, process.pid, run_dir, started_at
        self.stop_requested, self.exit_code = False, None
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
        if self.pid is None and self.lock_problem:
            self.adopt()  # the page asks again until a person has removed the unreadable lock
        if self.pid is None:
            return RunStatus(None, "idle", self.lock_problem or "No training run started from this app yet.")
        return run_status(self.run_dir, self.poll(), self.stop_requested, self.started_at)


def new_run_dir(checkpoints_dir: Path, request: TrainRequest) -> Path:
    """The request's run name, checked, or `<preset>-<date>-<time>` (numbered if taken)."""
    if request.name:
        if not RUN_NAME.fullmatch(request.name):
            raise UserError("A run name has letters, digits, '.', '-' or '_' (up to 64, not starting with '.').")
        if (checkpoints_dir / request.name).exists():
            raise UserError(f"A run named {request.name} already exists: choose another name.")
        return checkpoints_dir / request.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir, suffix = checkpoints_dir / f"{request.preset}-{stamp}", 1
    while run_dir.exists():
        suffix += 1
        run_dir = checkpoints_dir / f"{request.preset}-{stamp}-{suffix}"
    return run_dir


def make_run_dir(run_dir: Path, request: TrainRequest, arguments: list[str]) -> None:
    """Create the new run folder, with its own copy of an uploaded corpus (`arguments` then name the copy)."""
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


def spawn_trainer(run_dir: Path, arguments: list[str]) -> subprocess.Popen:
    """`python -m mlm.train <arguments>` at a lower CPU priority, its output appended to the run's train.log."""
    command = launcher() + ["mlm.train"] + arguments
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")]))}
    if (run_dir / UPLOAD_DIR).is_dir():  # an uploaded corpus's tokenized cache goes with it, not to ~/.cache
        env["MLM_CACHE"] = str(run_dir / UPLOAD_DIR / "cache")
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
    # Set before the child spawns any thread or worker (they inherit it); preexec_fn is unsafe in a threaded server.
    os.setpriority(os.PRIO_PROCESS, process.pid, TRAINING_NICENESS)
    return process


def disk_error(error: OSError) -> Exception:
    """A full or read-only disk as a one-line UserError; anything else as it is."""
    if error.errno in DISK_ERRORS:
        return UserError(f"Cannot write the run folder: {error.strerror}. Free some space or make the checkpoints "
                         f"folder writable.")
    return error
