"""A run folder's files without a training run: the checkpoint schedule's clock, best/'s two renames, a failed
save's staging folder, the shipped checkpoints' manifests, and a metrics.jsonl that cannot be read during a resume.
Whole runs killed at every stage of a publish are in tests/integration/test_durable.py."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import REPO
from mlm.errors import UserError
from mlm.model.files import load_model
from mlm.runs import durability
from mlm.runs.atomic import staged
from mlm.runs.layout import CHECKPOINT_MANIFEST, METRICS_FILE, SNAPSHOT_DIR
from mlm.runs.manifest import checkpoint_problem, read_manifest
from mlm.runs.metrics import read_metrics


def test_checkpoint_schedule_by_steps_and_by_minutes():
    clock = [1000.0]  # its own clock: the machine's uptime (what time.monotonic counts) must not matter
    schedule = durability.CheckpointSchedule(every_steps=100, every_minutes=2.0, last_step=0, clock=lambda: clock[0])
    assert not schedule.due(99)
    assert schedule.due(100)
    schedule.saved(100)
    clock[0] += 119
    assert not schedule.due(150)
    clock[0] += 1
    assert schedule.due(150)  # two minutes, whatever the steps
    off = durability.CheckpointSchedule(every_steps=None, every_minutes=None, clock=lambda: clock[0])
    clock[0] += 10_000
    assert not off.due(10**6)


def test_a_kill_between_the_two_renames_of_best_leaves_best_in_place(tmp_path):
    """best/ is swapped with two renames (best -> best.old, staging -> best); a kill between them is undone."""
    (tmp_path / "best.old").mkdir()
    (tmp_path / "best.old" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / ".staging-x").mkdir()  # the new best/, never renamed into place
    (tmp_path / "training_state").mkdir()
    (tmp_path / "training_state" / "state.json").write_text('{"step": 3}')
    assert durability.prepare_run_dir(tmp_path, resume=True)[0] == 3
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "best.old").exists() and not list(tmp_path.glob(".staging-*"))


def test_failed_save_leaves_no_staging_folder(tmp_path):
    with pytest.raises(OSError):
        with staged(tmp_path) as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            raise OSError(28, "No space left on device")
    assert not list(tmp_path.glob(".staging-*"))


@pytest.mark.parametrize("name", ["scratch-wikitext2", "minilm-wikitext2-lora"])
def test_a_shipped_checkpoint_carries_a_manifest_and_is_verified_on_load(name, tmp_path):
    shipped = REPO / "checkpoints" / name
    manifest = read_manifest(shipped)
    assert manifest["step"] == read_metrics(shipped)[-1]["step"]
    # what a publish covers: every file but those written beside the checkpoint (metrics, snapshots)
    files = {p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == {f for f in files - {CHECKPOINT_MANIFEST, METRICS_FILE}
                                      if not f.startswith(SNAPSHOT_DIR + "/")}
    assert checkpoint_problem(shipped) is None
    copy = shutil.copytree(shipped, tmp_path / name, ignore=shutil.ignore_patterns(SNAPSHOT_DIR))
    weights = max(manifest["files"], key=lambda f: manifest["files"][f]["size"])
    data = bytearray((copy / weights).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight: same size, still loadable; only the checksum tells
    (copy / weights).write_bytes(bytes(data))
    with pytest.raises(UserError) as refused:
        load_model(copy)
    assert f"{weights} does not match {CHECKPOINT_MANIFEST}" in str(refused.value) and "\n" not in str(refused.value)


def test_a_metrics_file_that_cannot_be_read_now_is_never_rewritten_on_resume(tmp_path):
    """A resume cuts metrics.jsonl back to its checkpoint's step. A read error then (here a real one: the name leads
    to a folder, so reading fails with an OSError as a disk error would) must not pass for an empty file, which the
    cut would write back: the resume is refused with one line and the file left as it was."""
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps({"step": step, "epoch": step / 4, "split": "train", "loss": 5.0,
                                           "total_steps": 8, "tokens_per_s": 1.0, "elapsed_s": 1.0}) + "\n"
                               for step in (2, 4, 6)))
    run_dir = tmp_path / "run"
    (run_dir / "training_state").mkdir(parents=True)
    (run_dir / "training_state" / "state.json").write_text('{"step": 4}')
    (tmp_path / "unreadable").mkdir()
    (run_dir / METRICS_FILE).symlink_to(tmp_path / "unreadable")
    with pytest.raises(UserError) as refused:
        durability.prepare_run_dir(run_dir, resume=True)
    assert f"its {METRICS_FILE} cannot be read now" in str(refused.value) and "\n" not in str(refused.value)
    assert (run_dir / METRICS_FILE).readlink() == tmp_path / "unreadable"  # untouched, not replaced by an empty file
    (run_dir / METRICS_FILE).unlink()
    (run_dir / METRICS_FILE).symlink_to(history)  # readable again: the same resume goes ahead
    assert durability.prepare_run_dir(run_dir, resume=True)[0] == 4
    assert [r["step"] for r in read_metrics(run_dir)] == [2, 4]
