"""The classroom demo: `python app.py` serves it on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (default 127.0.0.1:7860).

MLM_CHECKPOINTS_DIR points it at another checkpoints folder (default: checkpoints/ beside this file).

Inference requests share one worker so two of them never fight over the two CPUs of a free Space; training runs in
its own lower-priority process, so the page stays responsive while a run trains.
"""

import os

from pathlib import Path

from mlm.ui import CSS, DemoApp, build_demo

INFERENCE_CONCURRENCY = 1


def main() -> None:
    checkpoints = os.environ.get("MLM_CHECKPOINTS_DIR", Path(__file__).resolve().parent / "checkpoints")
    demo = build_demo(DemoApp(checkpoints))
    demo.queue(default_concurrency_limit=INFERENCE_CONCURRENCY)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        css=CSS,
        footer_links=["api"],
    )


if __name__ == "__main__":
    main()
