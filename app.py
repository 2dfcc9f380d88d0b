"""The classroom demo: `python app.py` serves it on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (Gradio's defaults,
127.0.0.1 and the first free port from 7860, when they are unset; a Hugging Face Space sets both).

MLM_CHECKPOINTS_DIR points it at another checkpoints folder (default: checkpoints/ beside this file).
MLM_TORCHSCRIPT=0 runs the encoders eagerly instead of traced by TorchScript (the same answers; traced serves more
answers a second: benchmarks/records/2026-12-08_cpu-xeon-amx_torchscript-serving has the A/B).

Inference requests share one worker thread (mlm.serve.inference) so two forward passes never fight over the two CPUs of a
free Space; up to FILL_MASK_CONCURRENCY requests wait on it at once and share its next padded forward pass. Of the
two cores, torch gets one (INFERENCE_THREADS) and the web server the other (see GIL_SWITCH_SECONDS for how the two
threads share Python). Training runs in its own lower-priority process, so the page stays responsive.

A public Space serves a whole class, so nothing one visitor sends may stall it: the queue holds at most QUEUE_SIZE
events and one session at most EVENTS_PER_SESSION (beyond, "The app is busy: try again in a moment"), request
bodies over 1 MB are refused before they are read (uploads excepted) and texts over 5,000 characters before they
are tokenized (mlm.serve.checks.check_text), and errors tell the user what is wrong in their terms while the details go
to this process's log (stderr).
"""

import logging
import os
import sys
import threading
from pathlib import Path

import torch
from starlette.middleware import Middleware

from mlm.ui.app import DemoApp, build_demo
from mlm.ui.body_limit import BodyLimit
from mlm.ui.common import CSS
from mlm.ui.gradio_patches import patch_gradio
from mlm.ui.train_tab import upload_limit

# fill_mask requests (API and Compare tab) waiting together on the inference worker: its largest batch. The Explain
# views compute in their own handlers, so their group ("inference") keeps one at a time.
FILL_MASK_CONCURRENCY = 16
QUEUE_SIZE = 128  # events waiting for a worker, all sessions together: about a second of work when batched
EVENTS_PER_SESSION = 8  # a page opening fires up to 4 events at once (3 loads, a tick); then a few clicks
# Gradio's event loop (HTTP, queue, event streams) is busy Python under load: with torch's default of a thread per
# core, its second thread spin-waited for the core the server held, and a short sentence took several times as long
# on a busy 2-core machine. One thread for torch leaves the server a core (the load benchmark's record,
# benchmarks/records/2026-11-29_cpu_load-test, notes the ceiling before and after).
INFERENCE_THREADS = 1
# The inference worker releases the GIL inside each torch op and needs it back after each, hundreds of times a
# forward pass; by default a thread running Python (the event loop) keeps it up to 5 ms (Python's switch interval)
# before handing it over, so forward passes crawled behind the server's work. A tenth of that raised the closed-loop
# ceiling (same record).
GIL_SWITCH_SECONDS = 0.0005
# Gradio keeps each session's state for 10,000 sessions by default, from anyone sending new session ids, and a
# session's component configurations (computed on demand since cheap_sessions) take memory per session: 500 sessions
# is a class several times over, and bounds it.
SESSION_CAPACITY = 500


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(INFERENCE_THREADS)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    app = DemoApp(os.environ.get("MLM_CHECKPOINTS_DIR", Path(__file__).resolve().parent / "checkpoints"),
                  torchscript=os.environ.get("MLM_TORCHSCRIPT", "1") != "0")
    demo = build_demo(app)
    # Load the default models while the server starts, so the first student does not wait for them.
    threading.Thread(target=app.compare.warm_up, daemon=True).start()
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    patch_gradio(demo, concurrency={"fill_mask": FILL_MASK_CONCURRENCY}, events_per_session=EVENTS_PER_SESSION)
    port = os.environ.get("GRADIO_SERVER_PORT")
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME"), server_port=int(port) if port else None,
                css=CSS, footer_links=["api"], max_file_size=upload_limit(),  # no uploads where training is off
                state_session_capacity=SESSION_CAPACITY,
                app_kwargs={"middleware": [Middleware(BodyLimit)]})


if __name__ == "__main__":
    main()
