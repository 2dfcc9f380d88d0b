"""Snapshots for the time-lapse: written during training (atomically, compactly, faithfully), kept on resume, and
answered from (list_snapshots, fill_mask_at, candidate_history)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import OFFLINE_ENV, REPO, SCRATCH_NAME, train_tiny
from mlm.runs.metrics import read_metrics
from mlm.serve.answers import Predictor
from mlm.serve.registry import ModelRegistry
from mlm.model.build import seeded_start
from mlm.runs.layout import SNAPSHOT_DIR
from mlm.runs.snapshots import FAITHFUL_TOP1, GROUP, decode, encode, read_manifest
from mlm.train.snapshots import planned_steps
from mlm.serve.timelapse import SnapshotModels

TINY = ["--preset", "scratch", "--max-train-blocks", "64", "--max-eval-blocks", "16", "--batch-size", "8"]
SENTENCE = "The capital of France is [MASK]."


@pytest.fixture(scope="module")
def models(app_project) -> SnapshotModels:
    return SnapshotModels(Predictor(ModelRegistry(app_project / "checkpoints")))


def test_a_run_with_four_snapshots_lists_them_with_their_validation_points(app_project):
    run = app_project / "checkpoints" / "scratch-wikitext2"  # trained with --snapshots 4 (8 steps)
    entries = read_manifest(run)
    assert [e["step"] for e in entries] == planned_steps(4, 8) == [0, 1, 2, 8]
    valid = {m["step"]: m["loss"] for m in read_metrics(run) if m["split"] == "valid"}
    assert [e["valid_loss"] for e in entries] == [valid[e["step"]] for e in entries]
    assert entries[0]["format"] == "seed" and entries[-1]["format"] == "run" and entries[-1]["file"] is None
    for entry in entries[1:-1]:  # stored compactly, and only as compact as stays faithful
        assert entry["format"] in {"int4", "int8", "fp16"} and entry["top1_agreement"] >= FAITHFUL_TOP1
        assert (run / SNAPSHOT_DIR / entry["file"]).stat().st_size == entry["bytes"] < 21_000_000
    card = (run / "README.md").read_text()
    assert "## Snapshots (time-lapse)" in card and "| 8 | 1.00 |" in card and "top-1 agreement" in card
    assert not list((run / SNAPSHOT_DIR).glob("*.tmp"))


@pytest.mark.parametrize("fmt, bits", [("int4", 4), ("int8", 8)])
def test_compact_formats_round_trip_within_half_a_step(fmt, bits):
    torch.manual_seed(0)
    weights = torch.randn(37, 70) * torch.rand(37, 1)  # rows of different scales; 70 is not a multiple of 32
    decoded = decode(encode(weights, fmt), fmt, weights.shape)
    group = GROUP
    for row in range(weights.shape[0]):  # a hand-written bound, group by group
        for start in range(0, weights.shape[1], group):
            original, restored = weights[row, start:start + group], decoded[row, start:start + group]
            step = original.abs().max() / (2 ** (bits - 1) - 1)
            assert (original - restored).abs().max() <= step / 2 * 1.01 + 1e-6
    assert torch.equal(decode(encode(weights[0], fmt), fmt, weights[0].shape), weights[0].half().float())


def test_the_random_start_is_rebuilt_from_the_seed(app_project):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    run = app_project / "checkpoints" / "scratch-wikitext2"
    tokenizer = AutoTokenizer.from_pretrained(run)
    torch.manual_seed(42)  # the seed the run was trained with, then the model, as the Trainer does
    reference = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                           num_hidden_layers=3, hidden_size=256, num_attention_heads=4,
                                           intermediate_size=1024, max_position_embeddings=512))
    rebuilt = seeded_start(tokenizer, 42)
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), rebuilt.state_dict().values()))


def test_a_mimetic_run_starts_from_its_init_and_its_random_start_is_rebuilt_with_it(tmp_path):
    run = train_tiny(tmp_path / "mimetic", "--snapshots", "3", "--init", "mimetic", *TINY)
    first = read_manifest(run)[0]
    # "seed" only if rebuilding from seed and init gave the trainer's start bit for bit (checked when written)
    assert (first["step"], first["format"], first["seed"], first["init"]) == (0, "seed", 42, "mimetic")
    model, tokenizer = SnapshotModels(Predictor(ModelRegistry(tmp_path))).model_at("mimetic", 0)
    for layer in model.bert.encoder.layer:
        assert torch.equal(layer.attention.self.key.weight, layer.attention.self.query.weight)
    plain = seeded_start(tokenizer, 42)  # the same seed with Hugging Face's init is another start
    assert not torch.equal(plain.bert.embeddings.position_embeddings.weight,
                           model.bert.embeddings.position_embeddings.weight)
    shutil.rmtree(run)


def test_list_snapshots_and_the_last_snapshot_is_the_run(models):
    assert SCRATCH_NAME in models.runs() and "MiniLM + LoRA (WikiText-2)" not in models.runs()
    listed = models.list_snapshots(SCRATCH_NAME)
    assert [s["step"] for s in listed] == [0, 1, 2, 8] and set(listed[0]) == {"step", "epoch", "valid_loss"}
    last = models.fill_mask_at(SENTENCE, 5, SCRATCH_NAME, 8)
    assert last == models.predictor.fill_mask(SENTENCE, 5, SCRATCH_NAME, SCRATCH_NAME)["left"]
    first = models.fill_mask_at(SENTENCE, 5, SCRATCH_NAME, 0)
    assert set(first) == set(last) and first["tokens"] == last["tokens"]
    assert [c["token"] for c in first["masks"][0]["candidates"]] != [c["token"] for c in last["masks"][0]["candidates"]]


def test_a_stored_snapshot_predicts_like_its_weights_in_the_hugging_face_pipeline(models, app_project, tmp_path):
    """Independent check of decoding: the decoded step-2 weights saved as a plain checkpoint, read by HF's pipeline."""
    from transformers import pipeline

    model, tokenizer = models.model_at(SCRATCH_NAME, 2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    expected = pipeline("fill-mask", model=str(tmp_path), top_k=5)(SENTENCE)
    answer = models.fill_mask_at(SENTENCE, 5, SCRATCH_NAME, 2)
    assert [c["token"] for c in answer["masks"][0]["candidates"]] == [e["token_str"] for e in expected]
    for candidate, reference in zip(answer["masks"][0]["candidates"], expected):
        assert candidate["score"] == pytest.approx(reference["score"], rel=1e-4)


def test_candidate_history_ends_at_the_final_probabilities_for_every_mask(models):
    text = "The [MASK] of the river is in the [MASK] mountains."
    history = models.candidate_history(text, SCRATCH_NAME, 3)
    final = models.predictor.fill_mask(text, 3, SCRATCH_NAME, SCRATCH_NAME)["left"]
    assert [s["step"] for s in history["snapshots"]] == [0, 1, 2, 8] and len(history["masks"]) == 2
    for mask, answer in zip(history["masks"], final["masks"]):
        assert [c["token"] for c in mask["candidates"]] == [c["token"] for c in answer["candidates"]]
        for candidate, reference in zip(mask["candidates"], answer["candidates"]):
            assert len(candidate["probabilities"]) == 4
            assert candidate["probabilities"][-1] == pytest.approx(reference["score"], rel=1e-5)
        assert mask["candidates"][0]["probabilities"][0] < mask["candidates"][0]["probabilities"][-1]


def test_bad_requests_get_one_line_messages(models):
    assert "no snapshot at step 5" in models.fill_mask_at(SENTENCE, 5, SCRATCH_NAME, 5)["error"]
    assert "keeps no snapshots" in models.fill_mask_at(SENTENCE, 5, "MiniLM + LoRA (WikiText-2)", 0)["error"]
    assert "no [MASK]" in models.candidate_history("No mask here.", SCRATCH_NAME)["error"]
    assert "Unknown model" in models.candidate_history(SENTENCE, "nope")["error"]


KILL_ON_SECOND_FILE = """
import os, signal, sys
import mlm.runs.snapshots as snapshots
from mlm.train.trainer import main
real_save, calls = snapshots.save_file, []

def save_then_die(tensors, path, metadata=None):
    calls.append(path)
    if len(calls) == 2:  # the second snapshot file: half of it on disk, then the process is killed
        real_save(tensors, path, metadata=metadata)
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(tensors, path, metadata=metadata)

snapshots.save_file = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_during_a_snapshot_write_leaves_the_earlier_snapshots_intact(tmp_path):
    run = tmp_path / "killed"
    command = [sys.executable, "-c", KILL_ON_SECOND_FILE, "--data-dir", str(REPO.parent / "shared" / "data" / "wikitext-2-v1"),
               "--output-dir", str(run), "--epochs", "1", "--log-every", "2", "--snapshots", "4", *TINY]
    result = subprocess.run(command, cwd=REPO, env=OFFLINE_ENV, capture_output=True, text=True)
    assert result.returncode == -9
    entries = read_manifest(run)
    assert [e["step"] for e in entries] == [0, 1]  # the step-2 snapshot never made it into the manifest
    tensors = load_file(run / SNAPSHOT_DIR / entries[1]["file"])  # complete and readable
    assert sum(t.numel() for t in tensors.values()) > 1_000_000
    assert not (run / SNAPSHOT_DIR / "step-0000002.safetensors").exists()
    assert len(list((run / SNAPSHOT_DIR).glob("*.tmp"))) == 1  # the half-written file, under its temporary name


def test_a_resumed_run_keeps_its_snapshots(tmp_path):
    run = train_tiny(tmp_path / "resumed", "--snapshots", "4", *TINY)
    before = read_manifest(run)
    files = {e["file"]: (run / SNAPSHOT_DIR / e["file"]).read_bytes() for e in before if e["file"]}
    final_weights = load_file(run / "model.safetensors")
    subprocess.run([sys.executable, "-m", "mlm.train", "--resume", str(run), "--epochs", "2"], cwd=REPO,
                   env=OFFLINE_ENV, check=True, capture_output=True)
    after = read_manifest(run)
    assert [e["step"] for e in after] == [0, 1, 2, 8, 16]
    assert after[:3] == before[:3] and all((run / SNAPSHOT_DIR / f).read_bytes() == b for f, b in files.items())
    # the run's step-8 weights moved on, so that snapshot was written out before training went on, faithfully
    assert after[3]["file"] and after[3]["format"] in {"int4", "int8", "fp16"} and after[-1]["format"] == "run"
    model, _ = SnapshotModels(Predictor(ModelRegistry(tmp_path))).model_at("resumed", 8)
    restored = model.state_dict()
    for name, original in final_weights.items():
        bound = original.abs().max() / 14 + 1e-3  # half an int4 step at worst
        assert (restored[name] - original).abs().max() <= bound, name
    shutil.rmtree(run)


def test_the_shipped_run_tells_the_story_random_plateau_final():
    """The shipped from-scratch checkpoint's time-lapse: a snapshot on the plateau guesses a frequent function word or
    punctuation for every sentence, and the last snapshot is the shipped model itself."""
    models = SnapshotModels(Predictor(ModelRegistry(REPO / "checkpoints")))
    steps = [s["step"] for s in models.list_snapshots(SCRATCH_NAME)]
    assert len(steps) >= 3 and steps[0] == 0
    frequent = {"the", ",", ".", "of", "and", "a", "in", "to", "was", "is", '"', "@-@"}
    tops = [models.fill_mask_at(SENTENCE, 1, SCRATCH_NAME, step)["masks"][0]["candidates"][0]["token"]
            for step in steps]
    assert any(top in frequent for top in tops[1:-1]), tops
    assert models.fill_mask_at(SENTENCE, 5, SCRATCH_NAME, steps[-1]) == \
        models.predictor.fill_mask(SENTENCE, 5, SCRATCH_NAME, SCRATCH_NAME)["left"]
    card = (REPO / "checkpoints" / "scratch-wikitext2" / "README.md").read_text()
    for entry in read_manifest(REPO / "checkpoints" / "scratch-wikitext2"):  # steps, losses and storage in the card
        assert f"| {entry['step']} | {entry['epoch']:.2f} | {entry['valid_loss']:.4f} | {entry['format']} |" in card
