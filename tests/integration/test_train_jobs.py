"""Training jobs as a teacher meets them, with real CPU runs: the phases the status names, Stop inside a validation
(the process ends within seconds and leaves a resumable checkpoint), Resume from the tab, the minutes cap, an
upload's lifetime, a job that outlives its app (restart finds it; SIGTERM to the app does not orphan it), and a lock
file that cannot be read or written (never a second job unnoticed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import OFFLINE_ENV, REPO, WIKITEXT_DIR
from mlm.errors import UserError
from mlm.model.files import load_model
from mlm.runs.layout import LOCK_FILE
from mlm.runs.metrics import read_metrics
from mlm.runs.progress import read_progress
from mlm.ui.jobs.jobs import TrainingJobs
from mlm.ui.jobs.lock import Holder, JobLock
from mlm.ui.jobs.request import TrainRequest
from mlm.ui.app import DemoApp

# 10 steps of 8 per epoch, and a validation of 15 batches of 16 blocks: long enough to press Stop inside it
SLOW_VALIDATION = dict(preset="scratch", data_source="folder", data_dir=str(WIKITEXT_DIR), epochs=2, batch_size=8,
                       max_train_blocks=80, max_eval_blocks=240, max_minutes=20, log_every=5)


@pytest.fixture
def local_app(tmp_path, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    app = DemoApp(tmp_path / "checkpoints")
    yield app
    if app.jobs.running():
        app.jobs.stop()
        app.jobs.wait(60)


def watch(jobs: TrainingJobs, until, timeout_s: float = 300) -> list:
    """Every status seen (polled as the page's timer would, only faster) until `until(status)` holds."""
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append(jobs.status())
        if until(seen[-1]):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"timed out; phases seen: {[s.phase for s in seen][-20:]}, last: {seen[-1].message}")


def in_order(expected: list, seen: list) -> bool:
    remaining = iter(seen)
    return all(any(item == phase for phase in remaining) for item in expected)


def test_phases_then_stop_inside_a_validation_then_resume_from_the_tab(local_app):
    app, jobs = local_app, local_app.jobs
    jobs.start(TrainRequest(**SLOW_VALIDATION))
    seen = watch(jobs, lambda s: s.phase == "validating" and s.step >= 10)  # the end-of-epoch-1 validation
    assert in_order(["starting", "validating", "training", "validating"], [s.phase for s in seen])
    assert any(s.phase == "training" and s.eta_s for s in seen)  # once a validation was timed, an ETA
    assert all(s.elapsed_s is not None for s in seen)
    assert "validating" in app.train.training_status()

    began = time.monotonic()
    answer = app.train.stop_training()
    assert answer.startswith("Stopping") and "stopping" in answer
    assert jobs.wait(10) == 0  # well inside a 15-batch validation: it was abandoned, not finished
    assert time.monotonic() - began < 10
    status = jobs.status()
    assert (status.state, status.reason, status.resumable) == ("stopped", "stop", True)
    assert "Stopped by the Stop button" in status.message and "press Resume" in status.message
    assert [m["step"] for m in read_metrics(jobs.run_dir) if m["split"] == "valid"] == [0]  # not recorded
    state = json.loads((jobs.run_dir / "training_state" / "state.json").read_text())
    assert state["step"] == 10 and not state["finished"]
    assert load_model(jobs.run_dir).config.num_hidden_layers == 3

    second = app.train.stop_training()  # a second Stop keeps the outcome on screen
    assert "No training run is going." in second and "Stopped by the Stop button" in second

    assert "Resumed." in app.train.resume_training(None)
    assert "already going" in app.train.start_training("scratch", "folder", str(WIKITEXT_DIR), None, 1, 5e-4, 8, 100, 5)
    watch(jobs, lambda s: s.step > 10)  # it went on from step 10
    app.train.stop_training()
    jobs.wait(30)
    assert 10 < json.loads((jobs.run_dir / "training_state" / "state.json").read_text())["step"] <= 20
    assert jobs.status().reason in {"stop", "finished"}  # stopped, or finished (20 steps) before Stop arrived


def test_the_minutes_cap_counts_from_the_start_and_bounds_data_preparation(local_app):
    jobs = local_app.jobs
    began = time.monotonic()
    jobs.start(TrainRequest(**{**SLOW_VALIDATION, "max_minutes": 0.01}))  # 0.6 s: over before the data is ready
    assert jobs.wait(120) == 0
    status = jobs.status()
    assert (status.state, status.reason, status.resumable) == ("stopped", "cap", False)
    assert "Stopped by the 0.01-minute cap (it counts everything from Start" in status.message
    assert "before training began: nothing was saved" in status.message
    assert read_metrics(jobs.run_dir) == [] and not (jobs.run_dir / "training_state").exists()
    assert status.elapsed_s < time.monotonic() - began


def test_an_upload_is_copied_for_its_run_and_removed_once_the_run_finished(local_app, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    upload = tmp_path / "gradio" / "f00d" / "my notes [v2].txt"  # where Gradio keeps an upload, odd name included
    upload.parent.mkdir(parents=True)
    lines = [line for line in (WIKITEXT_DIR / "wiki.valid.tokens").read_text().splitlines() if line.strip()][:600]
    upload.write_text("\n".join(lines) + "\n")
    app = local_app
    answer = app.train.start_training("scratch", "file", "", str(upload), 1, 5e-4, 8, 16, 5, 8, "my-notes")
    assert answer.startswith("Started.") and "**my-notes**" in answer
    run_dir = app.checkpoints_dir.resolve() / "my-notes"
    assert not upload.exists()  # Gradio's copy is gone; the run has its own
    assert (run_dir / "upload" / "corpus.txt").read_text() == "\n".join(lines) + "\n"
    assert app.jobs.wait(300) == 0
    status = app.jobs.status()
    assert status.reason == "finished", status.message
    assert not (run_dir / "upload").exists()  # a finished run needs its corpus no more (nor its cache)
    assert not (app.checkpoints_dir / LOCK_FILE).exists()


APP_WITH_A_JOB = """
import json, sys, time
from mlm.ui.jobs.jobs import TrainingJobs
from mlm.ui.jobs.request import TrainRequest
jobs = TrainingJobs(sys.argv[1])
jobs.start(TrainRequest(**json.loads(sys.argv[2])))
print(json.dumps({"pid": jobs.pid, "run_dir": str(jobs.run_dir)}), flush=True)
time.sleep(600)
"""


def app_with_a_job(checkpoints: Path, **fields):
    """An app process (the part of it that owns jobs) that started a job; (app process, trainer pid, run folder)."""
    app = subprocess.Popen([sys.executable, "-c", APP_WITH_A_JOB, str(checkpoints),
                            json.dumps({**SLOW_VALIDATION, **fields})], cwd=REPO, env=OFFLINE_ENV,
                           stdout=subprocess.PIPE, text=True)
    job = json.loads(app.stdout.readline())
    deadline = time.monotonic() + 300
    while read_progress(job["run_dir"]).get("phase") not in {"training", "validating"}:
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.2)
    return app, job["pid"], Path(job["run_dir"])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_app_restarted_while_its_job_runs_finds_the_job_and_stops_it(tmp_path):
    app, trainer, run_dir = app_with_a_job(tmp_path / "checkpoints", epochs=40)
    app.kill()  # the app crashes (no chance to stop its job): the trainer runs on
    app.wait()
    assert alive(trainer)
    restarted = TrainingJobs(tmp_path / "checkpoints")
    try:
        assert restarted.running() and restarted.run_dir == run_dir and restarted.pid == trainer
        assert restarted.status().phase in {"training", "validating"}
        with pytest.raises(Exception, match="already going"):
            restarted.start(TrainRequest(**SLOW_VALIDATION))
        assert restarted.stop().startswith("Stopping")
        assert restarted.wait(60) == 0  # it saves within seconds; a busy machine takes longer to end a process
        status = restarted.status()
        assert (status.state, status.reason, status.resumable) == ("stopped", "stop", True)
        assert not (tmp_path / "checkpoints" / LOCK_FILE).exists()
    finally:
        if alive(trainer):
            os.kill(trainer, signal.SIGKILL)


def test_sigterm_to_the_app_stops_its_trainer_with_a_checkpoint(tmp_path):
    app, trainer, run_dir = app_with_a_job(tmp_path / "checkpoints", epochs=40)
    try:
        app.send_signal(signal.SIGTERM)
        app.wait(20)
        deadline = time.monotonic() + 20
        while alive(trainer):
            assert time.monotonic() < deadline, "the trainer outlived its app"
            time.sleep(0.1)
        assert read_progress(run_dir)["stop_reason"] == "stop"
        assert (run_dir / "training_state" / "state.json").is_file()
        assert app.returncode == -signal.SIGTERM  # the app still ends as SIGTERM asks
    finally:
        if alive(trainer):
            os.kill(trainer, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------------------------
# A lock file that cannot be read or written


@pytest.mark.parametrize("damage", ["torn", "not a lock", "a folder"])
def test_a_corrupt_lock_file_refuses_every_start_until_it_is_removed(tmp_path, damage):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    lock = checkpoints / LOCK_FILE
    if damage == "a folder":
        lock.mkdir()
    else:
        lock.write_text('{"pid": 12' if damage == "torn" else '{"pid": "someone", "run_dir": "x"}')
    jobs = TrainingJobs(checkpoints)
    for attempt in (lambda: jobs.start(TrainRequest(**SLOW_VALIDATION)), lambda: jobs.resume(checkpoints / "run")):
        with pytest.raises(UserError) as refused:
            attempt()
        message = str(refused.value)
        assert str(lock) in message and "delete that file and start again" in message and "\n" not in message
    assert jobs.status().message == message  # the Train tab says why nothing starts
    assert [p.name for p in checkpoints.iterdir()] == [LOCK_FILE]  # no run folder made; the lock left to a person
    if damage != "a folder":
        assert lock.read_text() in ('{"pid": 12', '{"pid": "someone", "run_dir": "x"}')
    (lock.rmdir if damage == "a folder" else lock.unlink)()
    jobs.refuse_if_running()  # removed: starting is allowed again


def trainers_under(folder: Path) -> list[int]:
    """The processes whose command line names `folder` (a trainer started for a run inside it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(folder) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_lock_file_that_cannot_be_written_ends_the_job_with_one_line(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    lock = JobLock(tmp_path / "gone" / LOCK_FILE)  # its folder does not exist: writing it fails with a real OSError
    jobs = TrainingJobs(checkpoints, lock=lock)
    with pytest.raises(UserError) as refused:
        jobs.start(TrainRequest(**SLOW_VALIDATION))
    message = str(refused.value)
    assert "Cannot write the lock file" in message and "not started" in message and "\n" not in message
    assert not jobs.running() and jobs.pid is None and jobs.status().state == "idle"
    assert list(checkpoints.iterdir()) == []  # its new run folder is gone again
    assert trainers_under(tmp_path) == []  # the trainer it had launched was ended (and reaped)


def test_an_app_releases_only_its_own_job_s_lock(tmp_path):
    """When this app's job ended, another app may hold the lock already: that lock stays."""
    lock = JobLock(tmp_path / LOCK_FILE)
    lock.write(Holder(os.getpid(), tmp_path / "other-run", time.time()))
    lock.release(os.getpid() + 1)
    assert lock.read().pid == os.getpid()
    lock.release(os.getpid())
    assert lock.read() is None
