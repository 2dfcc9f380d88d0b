"""A run's time-lapse as plain JSON (no Gradio here): its snapshots, a snapshot's guesses, and how the final
guesses' probabilities grew over training.

Snapshots share the run's own model as a skeleton: for each run (the last two used) one copy of its model is kept,
and a snapshot's weights are decoded into it when asked for, so a run with twelve snapshots costs the memory of two
models, not thirteen. The last snapshot is the run's own checkpoint and is answered by fill_mask itself
(mlm.serve.answers), so its answers are exactly `fill_mask`'s.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import torch

from mlm.errors import UserError
from mlm.serve.answers import Predictor, answer_from, one_side
from mlm.serve.checks import check_text, encode
from mlm.serve.inference import masked_top_k
from mlm.serve.lru import LRU
from mlm.model.build import seeded_start
from mlm.runs.layout import SNAPSHOT_MANIFEST
from mlm.runs.snapshots import (
    RUN_WEIGHTS, SEED, load_encoded, read_manifest, read_snapshot, snapshot_dir, unique_tensors,
)

CACHED_RUNS = 2
HISTORY_TOP_K = 5
WHOLE_VOCABULARY = 1 << 30  # a top-k this large is every token, sorted


@dataclass
class Skeleton:
    """A copy of a run's model that holds one snapshot's weights at a time."""
    version: int  # the snapshot manifest's mtime: a resumed run rewrites it, and the copy is made again
    model: torch.nn.Module
    step: int | None = None  # the snapshot loaded in it, None before the first


class SnapshotModels:
    def __init__(self, predictor: Predictor, cached_runs: int = CACHED_RUNS):
        self.predictor, self.registry = predictor, predictor.registry  # the last snapshot is the registry's model
        self._skeletons: LRU[str, Skeleton] = LRU(cached_runs)  # run -> its skeleton
        self._lock = threading.Lock()  # one skeleton per run: one snapshot in it at a time

    # ------------------------------------------------------------------------------------------------------------
    # Which snapshots exist

    def runs(self, entries: dict | None = None) -> list[str]:
        """Offered models (of `entries`, default: the registry's) that keep snapshots."""
        entries = self.registry.entries() if entries is None else entries
        return [name for name, entry in entries.items() if entry.folder is not None and read_manifest(entry.folder)]

    def entries(self, name: str) -> list[dict]:
        folder = self.registry.entry(name).folder
        entries = read_manifest(folder) if folder is not None else []
        if not entries:
            raise UserError(f"'{name}' keeps no snapshots: train a run with --snapshots N (the Train tab does).")
        return entries

    def list_snapshots(self, name: str) -> list[dict]:
        """[{"step", "epoch", "valid_loss"}] of the run's snapshots, oldest first."""
        return [{"step": e["step"], "epoch": e["epoch"], "valid_loss": e["valid_loss"]} for e in self.entries(name)]

    # ------------------------------------------------------------------------------------------------------------
    # A snapshot's model

    def entry_at(self, name: str, step: int) -> dict:
        entries = self.entries(name)
        matching = [e for e in entries if e["step"] == step]
        if not matching:
            raise UserError(f"'{name}' has no snapshot at step {step}; its snapshots are at steps "
                            f"{', '.join(str(e['step']) for e in entries)}.")
        return matching[0]

    def model_at(self, name: str, step: int):
        """(model, tokenizer) holding the run's weights at `step`; call with the lock held for a skeleton."""
        entry = self.entry_at(name, step)
        model, tokenizer = self.registry.load(name)
        if entry["format"] == RUN_WEIGHTS:
            return model, tokenizer
        version = (snapshot_dir(self.registry.entry(name).folder) / SNAPSHOT_MANIFEST).stat().st_mtime_ns
        skeleton = self._skeletons.get(name)
        if skeleton is None or skeleton.version != version:
            skeleton = Skeleton(version, copy.deepcopy(model))
            self._skeletons.put(name, skeleton)
        if skeleton.step != step:
            if entry["format"] == SEED:
                with torch.no_grad():
                    start = seeded_start(tokenizer, entry["seed"], entry.get("init", "bert"))  # runs before inits had names: bert
                    for target, value in zip(unique_tensors(skeleton.model).values(), unique_tensors(start).values()):
                        target.copy_(value)
            else:
                load_encoded(skeleton.model, read_snapshot(self.registry.entry(name).folder, entry), entry["format"])
            skeleton.step = step
        return skeleton.model, tokenizer

    # ------------------------------------------------------------------------------------------------------------
    # Answers

    def guesses_at(self, name: str, step: int, text: str, top_k: int):
        """(tokenizer, MaskGuesses) of the snapshot at `step` for a checked text: the registry's own forward pass."""
        with self._lock:
            net, tokenizer = self.model_at(name, step)
            ids = encode(net, tokenizer, text)["input_ids"][0].tolist()
            return tokenizer, masked_top_k(net, [ids], tokenizer.mask_token_id, tokenizer.pad_token_id, top_k)[0]

    def fill_mask_at(self, text: str, top_k: int, model: str, step: int) -> dict:
        """The same JSON as one side of `fill_mask`, from the run's snapshot at `step` (the last one is the run)."""
        def compute():
            if self.entry_at(model, int(step))["format"] == RUN_WEIGHTS:
                return self.predictor.predict(model, check_text(text, top_k), top_k)
            checked = check_text(text, top_k)
            tokenizer, guesses = self.guesses_at(model, int(step), checked, int(top_k))
            return answer_from(model, tokenizer, checked, int(top_k), guesses)
        return one_side(model, compute)

    def candidate_history(self, text: str, model: str, top_k: int = HISTORY_TOP_K) -> dict:
        """Per mask, the final snapshot's top-k candidates and their probability at every snapshot:
        {"model", "snapshots": [{"step", "epoch", "valid_loss"}], "masks": [{"index", "candidates":
        [{"token", "probabilities": [one per snapshot]}]}]}, or {"model", "error"}."""
        def compute():
            checked = check_text(text, top_k)
            per_snapshot = []  # each snapshot's whole distribution at each mask (top-k of the whole vocabulary)
            for entry in self.entries(model):
                tokenizer, guesses = self.guesses_at(model, entry["step"], checked, WHOLE_VOCABULARY)
                per_snapshot.append(torch.zeros_like(guesses.scores).scatter_(1, guesses.token_ids, guesses.scores))
            final_ids = per_snapshot[-1].topk(int(top_k), dim=-1).indices
            masks = [
                {"index": int(position), "candidates": [
                    {"token": token, "probabilities": [float(p[mask, token_id]) for p in per_snapshot]}
                    for token_id, token in zip(ids.tolist(), tokenizer.convert_ids_to_tokens(ids.tolist()))]}
                for mask, (position, ids) in enumerate(zip(guesses.positions, final_ids))
            ]
            return {"model": model, "snapshots": self.list_snapshots(model), "masks": masks}
        return one_side(model, compute)
