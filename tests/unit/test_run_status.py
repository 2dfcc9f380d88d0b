"""What the Train tab says about a run, from the files a run writes (no training here: the files are written by
hand, as the trainer would), and the checks a form passes before any process starts."""

from __future__ import annotations

import errno
import json
import resource
import signal
import subprocess
import sys
import time

import pytest

from conftest import OFFLINE_ENV, REPO, WIKITEXT_DIR
from mlm.data.corpus import load_corpus
from mlm.errors import one_line_error
from mlm.runs.progress import ProgressWriter, evaluations_expected, read_progress
from mlm.ui.jobs.status import run_status
from mlm.ui.jobs.request import TrainRequest
from mlm.ui.app import DemoApp
from mlm.ui.train_tab import status_markdown, upload_limit


def write_run(run_dir, progress: dict | None = None, state: dict | None = None, max_minutes=None, steps=(10,),
              total=100, tokens_per_s=1000.0, log=""):
    run_dir.mkdir(exist_ok=True)
    lines = [{"step": 0, "epoch": 0.0, "split": "valid", "loss": 10.0, "total_steps": total}]
    lines += [{"step": s, "epoch": s / 50, "split": "train", "loss": 7.0, "lr": 1e-3, "tokens_per_s": tokens_per_s,
               "elapsed_s": 1.0, "total_steps": total} for s in steps]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if progress is not None:
        writer = ProgressWriter(run_dir, progress.pop("started_at", time.time() - 30), max_minutes)
        writer.update(**progress)
    if state is not None:
        (run_dir / "training_state").mkdir(exist_ok=True)
        (run_dir / "training_state" / "state.json").write_text(json.dumps(state))
    (run_dir / "train.log").write_text(log)
    return run_dir


@pytest.mark.parametrize("phase, shown", [("preparing", "starting"), ("validating", "validating"),
                                          ("training", "training"), ("stopping", "stopping"), ("saving", "saving")])
def test_a_running_run_names_its_phase(tmp_path, phase, shown):
    run = write_run(tmp_path / "run", {"phase": phase, "evaluations_expected": 3, "tokens_per_step": 1000})
    status = run_status(run, exit_code=None, started_at=time.time() - 42)
    assert status.phase == shown and status.active
    assert 41 <= status.elapsed_s <= 60  # wall-clock time since Start
    markdown = status_markdown(status)
    assert shown in markdown and "since Start" in markdown and "42 s" in markdown


def test_stop_pressed_reads_stopping_until_the_checkpoint_is_being_written(tmp_path):
    run = write_run(tmp_path / "run", {"phase": "validating"})
    assert run_status(run, None, stop_requested=True).phase == "stopping"
    (run / "progress.json").unlink()
    write_run(run, {"phase": "saving"})
    assert run_status(run, None, stop_requested=True).phase == "saving"
    write_run(run, {"phase": "done", "stop_reason": "stop"})  # saved, the process still exiting
    assert run_status(run, None).phase == "stopping"


def test_the_eta_counts_the_remaining_validations_and_stops_at_the_cap(tmp_path):
    # 1 s per step (1,000 tokens a step at 1,000 tokens/s), 90 steps left; 2 of 3 validations left at 20 s each
    progress = {"phase": "training", "evaluations_done": 1, "evaluations_expected": 3, "evaluation_s": 20.0,
                "tokens_per_step": 1000}
    run = write_run(tmp_path / "run", dict(progress))
    status = run_status(run, None)
    assert status.eta_s == pytest.approx(90 * 1.0 + 2 * 20.0, abs=0.5) and not status.eta_capped
    run = write_run(tmp_path / "capped", {**progress, "started_at": time.time() - 30}, max_minutes=1)
    status = run_status(run, None)
    assert status.eta_s == pytest.approx(30, abs=2) and status.eta_capped  # the 1-minute cap comes first
    assert "(minutes cap)" in status_markdown(status)
    # during the first validation nothing was measured yet: no made-up ETA
    run = write_run(tmp_path / "first", {"phase": "validating", "evaluations_expected": 3, "tokens_per_step": 1000})
    assert run_status(run, None).eta_s is None


def test_evaluations_expected_follow_the_trainers_rule():
    # hand count: step 0, epoch ends 4 and 8, last step 10; with eval_every 3 also 3, 6, 9
    assert evaluations_expected(0, 10, 4, None) == 4
    assert evaluations_expected(0, 10, 4, 3) == 7
    assert evaluations_expected(5, 10, 4, None) == 2  # a resumed run: no step-0 pass, epoch end 8, last step 10


@pytest.mark.parametrize("reason, exit_code, words", [
    ("finished", 0, "Finished"),
    ("cap", 0, "Stopped by the 2-minute cap (it counts everything from Start: loading the data, building the model"),
    ("stop", 0, "Stopped by the Stop button"),
    ("diverged", 0, "the loss diverged"),
    ("stop", 1, "Stopped by the Stop button"),  # accelerate launch exits 1 after its workers saved
])
def test_an_ended_run_says_why_it_stopped(tmp_path, reason, exit_code, words):
    finished = reason == "finished"
    run = write_run(tmp_path / "run", {"phase": "done", "stop_reason": reason, "ended_at": time.time()},
                    {"step": 10, "total_steps": 100, "finished": finished}, max_minutes=2)
    status = run_status(run, exit_code)
    assert status.reason == reason and words in status.message
    assert status.state == ("finished" if finished else "stopped")
    assert status.resumable is not finished
    assert ("press Resume" in status.message) is not finished


def test_a_crash_reads_as_an_error_with_the_trainers_line(tmp_path):
    run = write_run(tmp_path / "run", {"phase": "training"}, log="Traceback...\nerror: the corpus has no text\n")
    status = run_status(run, exit_code=2)
    assert (status.state, status.reason) == ("failed", "error")
    assert status.message == "Failed: error: the corpus has no text"


def test_a_stop_before_training_began_says_nothing_was_saved(tmp_path):
    run = write_run(tmp_path / "run", {"phase": "done", "stop_reason": "cap"}, steps=(), max_minutes=0.5)
    status = run_status(run, 0)
    assert status.state == "stopped" and "0.5-minute cap" in status.message
    assert "before training began: nothing was saved" in status.message


def test_progress_is_replaced_whole(tmp_path):
    writer = ProgressWriter(tmp_path, 123.0, 2.5)
    writer.update(phase="validating")
    writer.evaluation_done(4.0)
    assert read_progress(tmp_path) | {"phase_started_at": 0} == {
        "phase": "validating", "stop_reason": None, "started_at": 123.0, "max_minutes": 2.5, "phase_started_at": 0, "ended_at": None,
        "evaluations_done": 1, "evaluations_expected": None, "evaluation_s": 4.0, "tokens_per_step": None}
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "progress.json").write_text('{"phase": "trai')  # a torn file (never written so, but read safely)
    assert read_progress(tmp_path) == {}


# ----------------------------------------------------------------------------------------------------------------
# Checks before a job starts: bounds, uploads, disks


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("MLM_MAX_TRAIN_MINUTES", raising=False)
    return DemoApp(tmp_path / "checkpoints")


FORM = dict(preset="scratch", source="folder", data_dir=str(WIKITEXT_DIR), upload=None, epochs=1, lr=5e-4,
            batch_size=8, max_train_blocks=100, max_minutes=5)


def test_training_inputs_are_bounded_by_the_machine(app, monkeypatch):
    assert "this machine has room for at most" in app.train.start_training(**{**FORM, "batch_size": 10**6})
    assert "At most 100 epochs" in app.train.start_training(**{**FORM, "epochs": 1000})
    monkeypatch.setenv("SPACE_ID", "org/demo")
    monkeypatch.setenv("MLM_ALLOW_TRAINING", "1")
    assert "minutes cap of at most 30" in app.train.start_training(**{**FORM, "max_minutes": None})
    assert "minutes cap of at most 30" in app.train.start_training(**{**FORM, "max_minutes": 600})
    assert app.jobs.status().state == "idle" and not (app.checkpoints_dir).exists()


@pytest.mark.parametrize("content, message", [
    (b"", "The file is empty."),
    (b"   \n\n", "The file is empty."),
    ("caf\u00e9 cr\u00e8me\nsecond line\n".encode("latin-1"), "The file is not UTF-8 text (byte 0xe9 at position 3)"),
    (b"one line only\n", "at least two non-blank lines"),
    (b"x" * 3000 + b"\n", "the limit is 0.001 MB"),
])
def test_a_bad_upload_gets_one_line_and_nothing_starts(app, tmp_path, monkeypatch, content, message):
    monkeypatch.setenv("MLM_MAX_UPLOAD_MB", "0.001")
    upload = tmp_path / "notes.txt"
    upload.write_bytes(content)
    answer = app.train.start_training(**{**FORM, "source": "file", "upload": str(upload)})
    assert answer.startswith("⚠️") and message in answer and "\n" not in answer
    assert app.jobs.status().state == "idle"


def test_uploads_are_off_where_training_is_off_and_limited_where_on(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "org/demo")
    monkeypatch.delenv("MLM_ALLOW_TRAINING", raising=False)
    assert upload_limit() == 0
    monkeypatch.setenv("MLM_ALLOW_TRAINING", "1")
    monkeypatch.setenv("MLM_MAX_UPLOAD_MB", "5")
    assert upload_limit() == 5_000_000


def test_a_file_name_with_brackets_is_a_name_not_a_pattern(tmp_path):
    corpus = tmp_path / "notes[1] (final).txt"
    corpus.write_text("First line of my notes.\nSecond line.\nThird line.\n")
    assert load_corpus(text_files=[str(corpus)])["train"] == ["First line of my notes.", "Second line."]


def test_a_run_name_is_checked(app):
    assert "A run name has letters" in app.train.start_training(**FORM, name="../escape")
    (app.checkpoints_dir / "taken").mkdir(parents=True)
    assert "A run named taken already exists" in app.train.start_training(**FORM, name="taken")


def test_an_unwritable_checkpoints_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    answer = DemoApp("/sys/mlm-checkpoints").train.start_training(**FORM)  # sysfs: writing is not permitted, even as root
    assert answer == ("⚠️ Cannot write the run folder: Operation not permitted. Free some space or make the "
                      "checkpoints folder writable.")


def test_disk_and_encoding_failures_read_as_one_line():
    full = OSError(errno.ENOSPC, "No space left on device", "/srv/app/checkpoints/run/model.safetensors")
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    wrapped = RuntimeError("An error occurred while generating the dataset")
    wrapped.__cause__ = UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte")
    assert one_line_error(full) == ("cannot write model.safetensors: No space left on device (free some space or "
                                    "choose another --output-dir)")
    assert one_line_error(wrapped) == "a text file is not UTF-8 text (byte 0xff at position 2): save it as UTF-8 plain text"
    assert one_line_error(rust) == ("cannot write the checkpoint: No space left on device (free some space or "
                                    "choose another --output-dir)")
    assert one_line_error(ValueError("a bug")) is None  # a real bug keeps its traceback


def test_requests_carry_the_validation_cap(tmp_path):
    assert TrainRequest(data_source="hub", max_eval_blocks=50).arguments(tmp_path)[-2:] == ["--max-eval-blocks", "50"]


def test_the_trainer_answers_a_non_utf8_corpus_and_a_full_disk_in_one_line(tmp_path, capsys):
    from mlm.train.trainer import main

    latin = tmp_path / "latin-1.txt"
    latin.write_bytes("Un caf\u00e9.\nDeux cr\u00e8mes.\nTrois.\n".encode("latin-1"))
    assert main(["--text-file", str(latin), "--output-dir", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: a text file is not UTF-8 text (byte 0xe9 at position 6): save it as UTF-8 plain text")

    def disk_of_two_megabytes():  # writes past 2 MB fail (EFBIG) as they would on a full disk (ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))

    full = subprocess.run([sys.executable, "-m", "mlm.train", "--data-dir", str(WIKITEXT_DIR), "--output-dir",
                           str(tmp_path / "full"), "--max-train-blocks", "16", "--max-eval-blocks", "8"],
                          cwd=REPO, env=OFFLINE_ENV, preexec_fn=disk_of_two_megabytes, capture_output=True, text=True)
    assert full.returncode == 2 and "Traceback" not in full.stderr
    assert full.stderr.strip().splitlines()[-1] == (
        "error: cannot write the checkpoint: File too large (free some space or choose another --output-dir)")
