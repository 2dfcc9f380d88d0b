"""Where a benchmark writes its result: a record folder, benchmarks/records/<date>_<hardware>_<change>/.

Every result is a folder of its own (as modded-nanogpt's records are): the JSON and the table a script writes, and
`record.json` beside them with the exact command, the commit it ran at (and whether the working tree had changes)
and the date, so a figure quoted in a README can always be traced to what produced it. benchmarks/README.md lists
the current record of each benchmark; benchmarks/LOG.md is the speedrun's table of changes.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "benchmarks" / "records"


def commit() -> str:
    """HEAD's hash, with "+changes" where the working tree differs from it (the record then shows it)."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def record_folder(hardware: str, change: str, folder: str | None = None) -> Path:
    """The folder to write into: `folder` if given, else a new records/<today>_<hardware>_<change>/. Its
    record.json (command, commit, date) is written at once, before the benchmark runs."""
    if folder is None:
        name = "_".join(re.sub(r"[^a-z0-9.]+", "-", part.lower()).strip("-") for part in (str(date.today()), hardware, change))
        path = RECORDS / name
    else:
        path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    provenance = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "commit": commit(),
                  "date": str(date.today())}
    (path / "record.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return path
