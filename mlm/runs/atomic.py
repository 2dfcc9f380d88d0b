"""The one atomic writer: a file or a folder replaced in one rename, so a reader (or a kill) sees the old one or
the new one, never half of either.

Every file that another process may read while it is rewritten goes through here: checkpoint files and their
manifest, progress.json, the app's lock file, metrics.jsonl when it is cut back, the tokenized-blocks cache, weight
snapshots, the Curves tab's CSV download. The writer is a callback that writes a given path, so one function serves
text, `torch.save`, safetensors' `save_file` and a csv writer alike:

    write_atomic(path, lambda temporary: save_file(tensors, temporary))
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from mlm.runs.layout import CHECKPOINT_MANIFEST, STAGING_PREFIX


def write_atomic(path: str | Path, write: Callable[[Path], None], mode: int = 0o644, durable: bool = True) -> Path:
    """Replace `path` by what `write(temporary)` writes to a temporary file beside it (same folder: the rename is
    atomic). `durable`: the contents reach the disk before the rename (so a power cut too leaves the old file or
    the new one); False for what is rebuilt on demand, where only readers need the whole file. `mode`: the temporary
    file is created 0600; a checkpoint is meant to be shared. The temporary file never outlives a failed write."""
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        if durable:
            fsync_file(temporary)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, mode: int = 0o644) -> Path:
    return write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), mode)


def fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_folder(folder: Path) -> None:
    """Make the renames inside `folder` durable (a rename is an entry of its folder)."""
    fsync_file(folder)


def previous_folder(target: Path) -> Path:
    """Where `replace_folder` keeps the folder it replaces, between its two renames."""
    return target.with_name(target.name + ".old")


def replace_folder(staging: Path, target: Path) -> None:
    """Swap a whole leaf folder (like best/) into place. A kill between the two renames leaves only
    `previous_folder(target)`, which mlm/runs/durability.py puts back."""
    old = previous_folder(target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def staging_folder(run_dir: Path) -> Path:
    """A new `.staging-*` folder inside `run_dir` (same file system: its files move in by rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=run_dir))
    staging.chmod(0o755)  # mkdtemp creates 0700; best/ is this very folder once swapped in
    return staging


@contextlib.contextmanager
def staged(run_dir: Path) -> Iterator[Path]:
    """A new staging folder, removed if writing it fails before its commit point (a full disk must not leave
    100 MB behind; a kill leaves it to the next run's `recover`)."""
    staging = staging_folder(run_dir)
    try:
        yield staging
    except BaseException:
        if not (staging / CHECKPOINT_MANIFEST).is_file():
            shutil.rmtree(staging, ignore_errors=True)
        raise
