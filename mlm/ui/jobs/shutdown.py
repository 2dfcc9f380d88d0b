"""Training jobs end with the app that started them: at exit, and on SIGTERM, where Python skips atexit.

Any object with a `shutdown()` method (mlm.ui.jobs.jobs.TrainingJobs) can be registered; this module knows nothing else of
jobs, so it sits below mlm/ui/jobs/jobs.py.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref

# An app that ends stops its jobs first (atexit), and so does one ended by SIGTERM (a Space stopping, `kill`), where
# Python would skip atexit and leave the trainer running: the handler stops them, then lets the signal do what it
# did before. Both are installed by the first registration, not on import: importing changes nothing.
_LIVE_JOBS: weakref.WeakSet = weakref.WeakSet()
_previous_sigterm = None


def shutdown_all() -> None:
    for jobs in list(_LIVE_JOBS):
        jobs.shutdown()


def end_jobs_with_the_app(jobs) -> None:
    global _previous_sigterm
    atexit.unregister(shutdown_all)  # registered once, however many jobs register
    atexit.register(shutdown_all)
    _LIVE_JOBS.add(jobs)
    if _previous_sigterm is None and threading.current_thread() is threading.main_thread():
        _previous_sigterm = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL
        signal.signal(signal.SIGTERM, _stop_jobs_then_terminate)


def _stop_jobs_then_terminate(signum, frame) -> None:
    shutdown_all()
    signal.signal(signal.SIGTERM, _previous_sigterm)
    if callable(_previous_sigterm):
        _previous_sigterm(signum, frame)
    else:
        os.kill(os.getpid(), signal.SIGTERM)
