"""The process clock: when this training process started, the one start that `--max-minutes`, `--time-budget` and
the app's progress panel (progress.json's `started_at`) all count from.

The start is the operating system's record of the process (psutil's create_time), not a time taken by some import:
so it includes the interpreter's own start-up and the imports, it is the same whoever asks and whenever, and nothing
needs to happen at import time to catch it. Read it when training starts.
"""

from __future__ import annotations

import time

import psutil


def process_start() -> float:
    """Unix time at which this process started."""
    return psutil.Process().create_time()


def on_monotonic(unix_time: float) -> float:
    """`unix_time` on the time.monotonic() clock, which a change of the system's time does not move."""
    return time.monotonic() - (time.time() - unix_time)
