"""Never lose work, never serve a broken model (issue 11, items 8-12): periodic checkpoints published as one unit,
kill -9 at every stage of a publish, tolerant metrics, exact resume, divergence.

Real training runs (tiny: 12 steps of 4 x 32 tokens on a small text corpus, one thread each) are killed at chosen
points of a publish through mlm.runs.manifest's KILL_ENV, which ends the process as abruptly as kill -9.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import OFFLINE_ENV, REPO, WIKITEXT_DIR
from mlm.runs import durability
from mlm.runs.layout import METRICS_FILE
from mlm.runs.metrics import read_metrics
from mlm.errors import UserError
from mlm.runs.manifest import KILL_ENV, checkpoint_problem, committed_stagings, read_manifest
from mlm.model.files import load_model
from mlm.serve.answers import Predictor
from mlm.serve.registry import ModelRegistry
from mlm.train.trainer import main

# 24 blocks of 32 tokens, batch 4: 6 steps an epoch, 12 in all; periodic checkpoints at steps 4 and 8, the last at 12
TINY = ["--max-train-blocks", "24", "--max-eval-blocks", "4", "--block-size", "32", "--batch-size", "4",
        "--eval-batch-size", "4", "--epochs", "2", "--log-every", "2", "--checkpoint-every-steps", "4"]
ENV = {**OFFLINE_ENV, "OMP_NUM_THREADS": "1"}  # one thread: on a busy 2-core machine far faster than two
KILLED = 137


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "wiki.txt"
    lines = (WIKITEXT_DIR / "wiki.train.tokens").read_text().splitlines()[:400]
    path.write_text("\n".join(lines) + "\n")
    return path


def train(corpus: Path, run_dir: Path, *extra: str, kill: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mlm.train", "--text-file", str(corpus), "--output-dir", str(run_dir), *TINY, *extra]
    env = {**ENV, KILL_ENV: kill} if kill else ENV
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def resume(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlm.train", "--resume", str(run_dir)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)


def killed_copy(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "uninterrupted"
    done = train(corpus, run_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    return run_dir


def killed_run(corpus: Path, folder: Path, kill: str) -> Path:
    done = train(corpus, folder, kill=kill)
    assert done.returncode == KILLED, done.stderr[-2000:]
    return folder


@pytest.fixture(scope="module")
def killed_after_commit(corpus, tmp_path_factory) -> Path:
    """Killed in the publish of step 8 just after its commit point: step 4 in place, step 8 committed in staging."""
    return killed_run(corpus, tmp_path_factory.mktemp("runs") / "after-commit", "2:1")


@pytest.fixture(scope="module")
def killed_before_commit(corpus, tmp_path_factory) -> Path:
    """Killed in the publish of step 8 before its commit point: step 4 in place, an incomplete staging folder."""
    return killed_run(corpus, tmp_path_factory.mktemp("runs") / "before-commit", "2:0")


# ----------------------------------------------------------------------------------------------------------------
# What "the same run" means: weights, optimizer and random state, and every logged loss, bit for bit


def tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    weights = {f"model.{k}": v for k, v in load_file(run_dir / "model.safetensors").items()}
    optimizer = {f"adam.{k}": v for k, v in load_file(run_dir / "training_state" / "optimizer.safetensors").items()}
    rng = {f"rng.{k}": v for k, v in load_file(run_dir / "training_state" / "rng.safetensors").items()}
    return {**weights, **optimizer, **rng}


def logged(run_dir: Path) -> list[tuple]:
    return [(m["step"], m["split"], m["loss"]) for m in read_metrics(run_dir)]


def assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    mine, theirs = tensors(resumed), tensors(uninterrupted)
    assert mine.keys() == theirs.keys()
    different = [name for name in mine if not torch.equal(mine[name], theirs[name])]
    assert not different, different[:5]
    steps = logged(resumed)
    assert len({(step, split) for step, split, _ in steps}) == len(steps), "a step was logged twice"
    assert steps == logged(uninterrupted)
    assert json.loads((resumed / "training_state" / "state.json").read_text())["step"] == 12
    assert checkpoint_problem(resumed) is None and not list(resumed.glob(".staging-*"))


def test_the_uninterrupted_run_is_published_whole(uninterrupted):
    manifest = read_manifest(uninterrupted)
    assert manifest["step"] == 12
    assert {"model.safetensors", "training_state/optimizer.safetensors", "training_state/rng.safetensors",
            "training_state/state.json", "train_config.json"} <= manifest["files"].keys()
    assert checkpoint_problem(uninterrupted) is None
    assert not list(uninterrupted.glob(".staging-*"))
    assert not (uninterrupted / METRICS_FILE).read_text().count("NaN")


def test_periodic_checkpoint_is_there_when_a_later_save_is_killed(killed_before_commit):
    """The run was killed while saving step 8: the periodic checkpoint of step 4 is whole, and resumable."""
    assert read_manifest(killed_before_commit)["step"] == 4
    assert checkpoint_problem(killed_before_commit) is None
    assert max(m["step"] for m in read_metrics(killed_before_commit)) == 8  # logged past the checkpoint


# ----------------------------------------------------------------------------------------------------------------
# kill -9 at every stage of a publish


def recover_killed_at(run_dir: Path, stage: int) -> int:
    """Finish the run folder's committed publish in a fresh process that dies after `stage` of its steps."""
    code = "import sys; from pathlib import Path; from mlm.runs.manifest import recover; recover(Path(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(run_dir)], cwd=REPO, env={**ENV, KILL_ENV: f"1:{stage}"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, KILLED), done.stderr
    return done.returncode


def contents(run_dir: Path, manifest: dict) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() if (run_dir / name).is_file() else None for name in manifest["files"]}


def assert_refused(run_dir: Path) -> None:
    """Neither offered by the app nor loaded: one clear line instead."""
    with pytest.raises(UserError) as refused:
        load_model(run_dir)
    assert "incomplete or damaged" in str(refused.value) and "\n" not in str(refused.value)
    assert str(run_dir.parent) not in str(refused.value)  # the folder by its name only (no server paths)
    assert run_dir.name not in ModelRegistry(run_dir.parent).names()


def test_kill_at_every_stage_of_a_publish_leaves_old_or_new_or_is_refused(killed_after_commit, tmp_path):
    staging = committed_stagings(killed_after_commit)[0]
    old_manifest, new_manifest = read_manifest(killed_after_commit), read_manifest(staging)
    assert (old_manifest["step"], new_manifest["step"]) == (4, 8)
    old, new = contents(killed_after_commit, old_manifest), contents(staging, new_manifest)
    assert old.keys() == new.keys() and old != new
    assert_refused(killed_after_commit)  # stage 1: committed, nothing moved yet
    moves = len(new_manifest["files"]) + 1  # every file, then the manifest
    outcomes = []
    for stage in range(1, moves + 2):
        run_dir = killed_copy(killed_after_commit, tmp_path / f"stage-{stage}")
        code = recover_killed_at(run_dir, stage)
        if checkpoint_problem(run_dir) is None:
            assert contents(run_dir, new_manifest) == new and read_manifest(run_dir)["step"] == 8
            outcomes.append("new")
        else:
            assert_refused(run_dir)
            outcomes.append("refused")
        # what --resume does first: the interrupted publish is finished, and the step-8 checkpoint is whole
        step, notes = durability.prepare_run_dir(run_dir, resume=True)
        assert step == 8 and contents(run_dir, new_manifest) == new and checkpoint_problem(run_dir) is None
        assert not list(run_dir.glob(".staging-*")), (stage, code)
        assert max(m["step"] for m in read_metrics(run_dir)) == 8
        shutil.rmtree(run_dir)
    # killed while moving files: refused; once the manifest is in place (or the process finished): the new one
    assert outcomes == ["refused"] * (moves - 1) + ["new", "new"]


def test_kill_before_the_commit_point_keeps_the_old_checkpoint(killed_before_commit, tmp_path):
    run_dir = killed_copy(killed_before_commit, tmp_path / "run")
    assert checkpoint_problem(run_dir) is None and list(run_dir.glob(".staging-*"))
    assert load_model(run_dir) is not None  # the step-4 checkpoint is served as it is
    step, notes = durability.prepare_run_dir(run_dir, resume=True)
    assert step == 4 and any("removed the incomplete save" in note for note in notes)
    assert not list(run_dir.glob(".staging-*"))  # the stale staging folder is cleaned
    assert max(m["step"] for m in read_metrics(run_dir)) == 4  # metrics cut back to the checkpoint


def test_resume_after_a_kill_mid_publish_equals_the_uninterrupted_run(killed_after_commit, uninterrupted, tmp_path):
    run_dir = killed_copy(killed_after_commit, tmp_path / "run")
    assert recover_killed_at(run_dir, 3) == KILLED  # a mix of step-4 and step-8 files
    assert_refused(run_dir)
    done = resume(run_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished the interrupted save of step 8" in done.stderr
    assert_same_run(run_dir, uninterrupted)


def test_resume_after_a_kill_before_commit_equals_the_uninterrupted_run(killed_before_commit, uninterrupted, tmp_path):
    run_dir = killed_copy(killed_before_commit, tmp_path / "run")
    with open(run_dir / METRICS_FILE, "ab") as metrics:  # and a line damaged by the kill, for good measure
        metrics.write(b'{"step": 9, "epoch": 1.5, "spl\xff\n')
    done = resume(run_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(run_dir, uninterrupted)


def test_fresh_run_killed_before_its_first_checkpoint_restarts_in_place(corpus, uninterrupted, tmp_path):
    run_dir = tmp_path / "fresh"
    killed_run(corpus, run_dir, "1:0")  # in its first save, at step 4
    assert (run_dir / "train_config.json").is_file() and read_metrics(run_dir)
    assert not durability.has_checkpoint(run_dir)
    # --resume says so and starts over (checked on a copy: the note, and the folder left clean for step 0) ...
    copy = killed_copy(run_dir, tmp_path / "copy")
    step, notes = durability.prepare_run_dir(copy, resume=True)
    assert step is None and any("starting over from step 0" in note for note in notes)
    assert not read_metrics(copy) and not list(copy.glob(".staging-*"))
    # ... and the same command as before simply runs again, in place
    done = train(corpus, run_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(run_dir, uninterrupted)


def test_a_damaged_checkpoint_is_refused_on_resume_and_on_load(uninterrupted, tmp_path, capsys, caplog):
    run_dir = killed_copy(uninterrupted, tmp_path / "run")
    optimizer = run_dir / "training_state" / "optimizer.safetensors"
    data = bytearray(optimizer.read_bytes())
    data[-1] ^= 0xFF  # same size: only the checksum tells
    optimizer.write_bytes(bytes(data))
    assert main(["--resume", str(run_dir)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training_state/optimizer.safetensors does not match" in errors[0]
    weights = run_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    predictor = Predictor(ModelRegistry(tmp_path))
    with caplog.at_level(logging.WARNING, logger="mlm.serve.registry"):
        answer = predictor.answer("run", "The [MASK] sat down.", 3)
    assert "damaged or incomplete" in answer["error"] and "\n" not in answer["error"]  # the client: one line
    assert "model.safetensors does not match" in caplog.text  # the log: which file


# ----------------------------------------------------------------------------------------------------------------
# metrics.jsonl read tolerantly


def test_damaged_metrics_lines_are_skipped_and_reported(uninterrupted, tmp_path, caplog):
    from mlm.ui.plots import curves as plots
    from mlm.ui.jobs.jobs import run_status

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    good = (uninterrupted / METRICS_FILE).read_bytes().splitlines(keepends=True)
    damaged = [b"\xff\xfe garbage\n", b'{"step": 3, "epoch": 0.5, "split": "tr\n', b"[1, 2]\n", b"42\n",
               b'{"step": 5, "split": "train"}\n', b'{"step": 6, "epoch": 1.0, "split": "valid", "loss": NaN, '
               b'"perplexity": NaN, "top1": 0, "top5": 0, "total_steps": 12}\n']
    (run_dir / METRICS_FILE).write_bytes(b"".join(good[:3] + damaged + good[3:]) + b'{"step": 13, "ep')
    with caplog.at_level(logging.WARNING, logger="mlm.runs.metrics"):
        records = read_metrics(run_dir)
    assert records == read_metrics(uninterrupted)
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == len(damaged)  # the cut last line: not
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlm.runs.metrics"):
        read_metrics(run_dir)
    assert not caplog.records  # reported once, not at every refresh
    status = run_status(run_dir, exit_code=0)  # the Train tab's status and the Curves tab still work
    assert status.step == 12 and status.valid_loss == records[-1]["loss"]
    loss, _ = plots.curves({"run": records}, "epoch")
    assert len(loss.data) == 2


# ----------------------------------------------------------------------------------------------------------------
# Divergence


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_diverging_run_is_marked_and_never_offered(corpus, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    run_dir = checkpoints / "exploding"
    done = train(corpus, run_dir, "--lr", "1e30", "--log-every", "1", "--checkpoint-every-steps", "1")
    assert done.returncode == 3, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the run diverged at step ") and "lower --lr" in last
    marker = strict_json((run_dir / "diverged.json").read_text())
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        strict_json(line)  # no NaN ever reaches metrics.jsonl
    good = marker["last_good_step"]
    assert good is not None and good < marker["step"]
    assert read_manifest(run_dir)["step"] == good  # the last good checkpoint is kept, whole, and finite
    assert all(t.isfinite().all() for t in load_file(run_dir / "model.safetensors").values())
    assert "exploding" not in ModelRegistry(checkpoints).names()


def broken_copy(source: Path, folder: Path, change) -> Path:
    """A legacy (manifest-less) copy of a checkpoint whose weights `change` edits in place."""
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    weights = load_file(folder / "model.safetensors")
    change(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_fill_mask_never_answers_nan(uninterrupted, tmp_path, caplog):
    def nan_weight(weights):
        weights["bert.embeddings.word_embeddings.weight"][5, 0] = float("nan")

    def huge_logits(weights):  # finite weights, yet the (tied) output layer overflows to +-inf: softmax gives NaN
        weights["bert.embeddings.word_embeddings.weight"][20000:20002] = torch.tensor([[1e38], [-1e38]])

    broken_copy(uninterrupted, tmp_path / "nan-weights", nan_weight)
    broken_copy(uninterrupted, tmp_path / "huge-logits", huge_logits)
    predictor = Predictor(ModelRegistry(tmp_path))
    with caplog.at_level(logging.WARNING, logger="mlm.serve.registry"):
        answer = predictor.fill_mask("The [MASK] sat down.", 3, "nan-weights", "huge-logits")
    strict_json(json.dumps(answer))
    assert "cannot load the checkpoint of 'nan-weights'" in answer["left"]["error"]
    assert "non-finite weights" in caplog.text  # refused at load, the reason logged
    assert "no usable scores" in answer["right"]["error"]
