"""A checkpoint published as one unit: files staged, a manifest of their checksums written last, then moved in.

Publishing a checkpoint replaces a dozen files of a run folder (weights, tokenizer, card, config, optimizer and RNG
state). Moved one by one, a kill between two moves left step-17 weights beside a step-5 optimizer state, and a
resume took the mix. Now:
  1. every file is written to a staging folder `.staging-*` inside the run folder (same file system: each move is
     an atomic rename);
  2. the files are flushed to disk and the staging folder's `checkpoint.json` is written: the commit point. It
     names the step and every file's size and sha256;
  3. the files are moved into the run folder (os.replace), `checkpoint.json` last, and the staging folder removed.

A kill before 2 leaves the old checkpoint as it was (the incomplete staging folder is stale: `recover` removes it).
A kill after 2 leaves a committed staging folder, whose moves `recover` finishes. Until then the run folder is
refused with one line: a committed staging folder is pending, or a file does not match the manifest. Folders
without a manifest (written before manifests existed) are taken as they are; the shipped checkpoints carry one.

This module needs no torch: tests kill it at each stage in a throw-away process that starts in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlm.errors import UserError
from mlm.runs.atomic import fsync_folder, write_text_atomic
from mlm.runs.layout import CHECKPOINT_MANIFEST, STAGING_PREFIX

# Fault injection for the tests: "N:K" ends the process (os._exit, as abrupt as kill -9) during its N-th publish,
# after K of that publish's steps (K=0: before the commit point; 1: just after it; then one per file moved).
KILL_ENV = "MLM_KILL_DURING_PUBLISH"
_publishes = 0


def file_sha256(path: Path, flush: bool = False) -> str:
    """The file's sha256; with `flush`, also forces its contents to disk (before a commit point names them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
        if flush:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    manifest = json.loads((folder / CHECKPOINT_MANIFEST).read_text())
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("step"), int):
        raise ValueError("no step or file list")
    return manifest


def committed_stagings(run_dir: Path) -> list[Path]:
    """Staging folders past their commit point whose files are not all moved in yet, oldest step first."""
    pending = [p for p in Path(run_dir).glob(STAGING_PREFIX + "*") if (p / CHECKPOINT_MANIFEST).is_file()]
    return sorted(pending, key=lambda p: _step_or_minus_one(p))


def _step_or_minus_one(folder: Path) -> int:
    try:
        return read_manifest(folder)["step"]
    except (OSError, ValueError):
        return -1


class _KillSwitch:
    """Counts the steps of one publish and ends the process where KILL_ENV says (tests only)."""

    def __init__(self):
        global _publishes
        _publishes += 1
        planned = os.environ.get(KILL_ENV, "")
        number, _, step = planned.partition(":")
        self.at = int(step) if number.isdigit() and step.isdigit() and int(number) == _publishes else None
        self.done = 0

    def check(self) -> None:
        if self.done == self.at:
            os._exit(137)

    def step_done(self) -> None:
        self.done += 1
        self.check()


def publish(staging: Path, run_dir: Path, step: int) -> None:
    """Commit the complete staging folder as the checkpoint of `step`, then move it into `run_dir`."""
    kill = _KillSwitch()
    kill.check()
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    # one thread per file: hashing and fsync release the GIL, so the optimizer state and the weights (the two
    # largest files) take as long as the largest alone
    with ThreadPoolExecutor(max_workers=max(1, len(files))) as pool:
        checksums = list(pool.map(lambda path: file_sha256(path, flush=True), files))
    entries = {p.relative_to(staging).as_posix(): {"size": p.stat().st_size, "sha256": checksum}
               for p, checksum in zip(files, checksums)}
    write_text_atomic(staging / CHECKPOINT_MANIFEST, json.dumps({"step": step, "files": entries}, indent=1) + "\n")
    fsync_folder(staging)
    kill.step_done()
    move_in(staging, run_dir, kill)


def move_in(staging: Path, run_dir: Path, kill: _KillSwitch | None = None) -> None:
    """Move a committed staging folder's files into `run_dir`, its manifest last. Files an interrupted earlier
    call moved already are skipped, so this also finishes a publish that a kill cut short."""
    kill = kill or _KillSwitch()
    for name in read_manifest(staging)["files"]:
        source = staging / name
        if source.is_file():
            destination = run_dir / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, destination)
            kill.step_done()
    os.replace(staging / CHECKPOINT_MANIFEST, run_dir / CHECKPOINT_MANIFEST)
    fsync_folder(run_dir)
    kill.step_done()
    shutil.rmtree(staging, ignore_errors=True)


def recover(run_dir: Path) -> list[str]:
    """Finish every committed publish and remove every incomplete staging folder. Only the process that owns the
    run folder (the trainer, before it starts) may call this: a live publish looks like an interrupted one."""
    notes = []
    for staging in committed_stagings(run_dir):
        move_in(staging, run_dir)
        notes.append(f"finished the interrupted save of step {read_manifest(run_dir)['step']}")
    for stale in Path(run_dir).glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
        notes.append(f"removed the incomplete save {stale.name}")
    return notes


def checkpoint_problem(folder: Path, deep: bool = True) -> str | None:
    """Why `folder` must not be used as a checkpoint now, or None. `deep` compares checksums, not only sizes."""
    folder = Path(folder)
    if committed_stagings(folder):
        return "a save was interrupted; resume the run to finish it"
    if not (folder / CHECKPOINT_MANIFEST).is_file():
        return None  # written before manifests existed
    try:
        files = read_manifest(folder)["files"]
    except (OSError, ValueError) as error:
        return f"its {CHECKPOINT_MANIFEST} is unreadable ({type(error).__name__})"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry.get("size") or (deep and file_sha256(path) != entry.get("sha256")):
            return f"{name} does not match {CHECKPOINT_MANIFEST}"
    return None


def verify_checkpoint(folder: Path) -> None:
    """UserError (one line, the folder named by its name only) if the checkpoint in `folder` is not whole."""
    problem = checkpoint_problem(folder)
    if problem:
        raise UserError(f"the checkpoint '{Path(folder).name}' is incomplete or damaged ({problem}): not used")
