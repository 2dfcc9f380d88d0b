"""metrics.jsonl: one JSON object per line, appended while a run trains and read by the app while it does.

Every reader must survive any line: a line cut by a kill, a disk error, a hand edit. A record without the fields
every reader relies on is skipped and reported (once), never passed on. Readers for display take an unreadable file
as empty; a resume, which rewrites the file, never does (see `truncate_metrics`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from mlm.errors import UserError
from mlm.runs.atomic import write_text_atomic
from mlm.runs.layout import METRICS_FILE

# Fields every reader relies on (the trainer, the Train tab's status, the Curves tab), per split.
REQUIRED_FIELDS = {"step": int, "epoch": (int, float), "split": str, "loss": (int, float), "total_steps": int}
SPLIT_FIELDS = {"train": ("tokens_per_s", "elapsed_s"), "valid": ("perplexity", "top1", "top5")}
_reported: set[tuple[str, int, bytes]] = set()  # damaged lines already logged: once, not at every page refresh
log = logging.getLogger(__name__)


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def record_problem(record) -> str | None:
    """Why a parsed metrics line is unusable, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for name, kind in REQUIRED_FIELDS.items():
        value = record.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"no valid '{name}'"
    numbers = ["loss", "epoch", *SPLIT_FIELDS.get(record["split"], ())]
    if not all(isinstance(record.get(n), (int, float)) and math.isfinite(record[n]) for n in numbers):
        return "a missing or non-finite number"
    return None


def parse_metrics(path: Path, data: bytes) -> tuple[list[dict], list[tuple[int, str]]]:
    """(usable records, [(line number, why)] of damaged lines) of the file `path` holding `data`. A last line
    without its newline is being written right now (or was cut by a kill): it is left out, not counted as damaged."""
    records, damaged = [], []
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):  # after the last newline: unfinished
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            problem = record_problem(record)
        except (UnicodeDecodeError, ValueError, RecursionError):
            problem = "not valid JSON"
        if problem:
            damaged.append((number, problem))
            if (str(path), number, line) not in _reported:
                _reported.add((str(path), number, line))
                log.warning("%s line %d skipped: %s", path, number, problem)
        else:
            records.append(record)
    return records, damaged


def read_metrics_checked(run_dir: str | Path) -> tuple[list[dict], list[tuple[int, str]]]:
    """What `parse_metrics` finds in the run's metrics.jsonl; nothing if it is missing or unreadable (the app
    shows the run without a curve and reads it again at the next refresh)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        data = path.read_bytes()
    except OSError:
        return [], []
    return parse_metrics(path, data)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every usable record of metrics.jsonl; damaged lines are skipped (and logged once)."""
    return read_metrics_checked(run_dir)[0]


def truncate_metrics(run_dir: Path, step: int) -> list[dict]:
    """Keep only the records up to `step` (those a resume from that step will not write again) and drop damaged
    lines; the file is replaced in one rename. Returns the records kept.

    Only a missing file counts as no records: a file that exists but cannot be read now (an I/O error, a network
    disk gone for a moment) is refused with a one-line UserError and left as it is. Read as empty, it would be
    written back empty and a run's whole history lost."""
    path = Path(run_dir) / METRICS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise UserError(f"cannot resume from {run_dir}: its {METRICS_FILE} cannot be read now "
                        f"({error.strerror or type(error).__name__}); nothing was changed, try again") from error
    records, _ = parse_metrics(path, data)
    kept = [r for r in records if r["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept
