"""The classroom demo: `python app.py` serves it on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (Gradio's defaults,
127.0.0.1 and the first free port from 7860, when they are unset; a Hugging Face Space sets both).

MLM_CHECKPOINTS_DIR points it at another checkpoints folder (default: checkpoints/ beside this file).

Inference requests share one worker so two of them never fight over the two CPUs of a free Space, and torch keeps
its default of one thread per core, the fastest for one request at a time (on 2 cores: 13 ms for both models
against 21 ms with one thread). Training runs in its own lower-priority process, so the page stays responsive.
"""

import os
import threading
from pathlib import Path

from mlm.ui import CSS, DemoApp, build_demo
from mlm.ui.train_tab import upload_limit

INFERENCE_CONCURRENCY = 1


def main() -> None:
    app = DemoApp(os.environ.get("MLM_CHECKPOINTS_DIR", Path(__file__).resolve().parent / "checkpoints"))
    demo = build_demo(app)
    # Load the default models while the server starts, so the first student does not wait for them.
    threading.Thread(target=app.warm_up, daemon=True).start()
    demo.queue(default_concurrency_limit=INFERENCE_CONCURRENCY)
    port = os.environ.get("GRADIO_SERVER_PORT")
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME"), server_port=int(port) if port else None,
                css=CSS, footer_links=["api"], max_file_size=upload_limit())  # no uploads where training is off


if __name__ == "__main__":
    main()
