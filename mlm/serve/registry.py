"""Which models the app offers, and their fill-mask predictions as plain JSON (no Gradio here).

The registry offers, by display name:
  * the models listed in `checkpoints/models.json` (shipped checkpoints; hub models only while the hub is reachable),
    each only if its folder is really there;
  * every other run folder under `checkpoints/` that holds a finished checkpoint, named after its folder, so a run
    trained from the app appears without a restart.

Loaded models are kept in a bounded cache: the configured (shipped) ones always, at most `extra_models` others,
least recently used out first; a model is loaded again if its weights file changed (a resumed run).
Predictions run the encoder once and the 30,522-way output layer only at the [MASK] positions, which gives the same
scores as `transformers.pipeline("fill-mask")` for a fraction of the work. Concurrent requests share padded forward
passes on one worker thread (mlm.serve.inference), and answers to repeated questions (the examples, the default sentence)
come from a small cache.

What reaches a client is in the user's terms only: server paths and exception details go to the server log.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch

from mlm.serve import readable
from mlm.serve.cards import model_card
from mlm.runs.durability import servable
from mlm.runs.checkpoint import METRICS_FILE
# The checks live in mlm.serve.checks; the app and the Explain views import them from here, beside the registry.
from mlm.serve.checks import (MASK, MAX_MASKS, MAX_TEXT_CHARS, MAX_TOP_K, check_length, check_masked,  # noqa: F401
                        check_sentence, check_text, check_top_k, normalise_masks)
from mlm.hub import hub_reachable
from mlm.errors import UserError
from mlm.serve.inference import LRUCache, MicroBatcher, TracedEncoders, masked_top_k
from mlm.model.build import load_model, weights_file

logger = logging.getLogger(__name__)

MODELS_FILE = "models.json"
EXTRA_MODELS = 2  # loaded models kept besides the configured ones (about 50-100 MB each)
ANSWER_CACHE_SIZE = 256
# Short sentences only: an answer repeats its text in each candidate's "sequence" (up to 200 times), so this bounds
# the cache to about 15 MB at worst; a typical answer is a few kB.
ANSWER_CACHE_MAX_CHARS = 300


@dataclass(frozen=True)
class ModelEntry:
    name: str
    location: str  # a checkpoint folder, or a hub name
    description: str = ""
    on_hub: bool = False

    @property
    def folder(self) -> Path | None:
        return None if self.on_hub else Path(self.location)

    def version(self):
        """Changes when the checkpoint is rewritten, so a cached model is reloaded."""
        weights = weights_file(self.folder) if self.folder else None
        return weights.stat().st_mtime_ns if weights else None


class ModelRegistry:
    def __init__(self, checkpoints_dir: str | Path, extra_models: int = EXTRA_MODELS):
        self.checkpoints_dir = Path(checkpoints_dir)
        self.project_dir = self.checkpoints_dir.resolve().parent  # models.json paths are relative to the project
        self.extra_models = extra_models
        self._loaded: OrderedDict[str, tuple] = OrderedDict()  # name -> (version, model, tokenizer), LRU first
        self._load_lock = threading.Lock()
        self._answers = LRUCache(ANSWER_CACHE_SIZE)  # (name, version, text, top_k) -> answer
        self._batcher = MicroBatcher(self._run_batch)
        self._encoders = TracedEncoders()

    # ------------------------------------------------------------------------------------------------------------
    # Which models exist

    def configured(self) -> list[ModelEntry]:
        """models.json entries that can be offered now (the folder exists, or the hub is reachable)."""
        path = self.checkpoints_dir / MODELS_FILE
        try:
            listed = json.loads(path.read_text())["models"] if path.is_file() else []
        except (OSError, ValueError, KeyError, TypeError):
            listed = []  # a broken registry file must not take the demo down; discovery still offers run folders
        entries = []
        for item in listed:
            if not isinstance(item, dict) or "name" not in item:
                continue
            description = item.get("description", "")
            if item.get("hub"):
                if hub_reachable():
                    entries.append(ModelEntry(item["name"], item["hub"], description, on_hub=True))
            elif "path" in item:
                folder = Path(item["path"])
                folder = folder if folder.is_absolute() else self.project_dir / folder
                if weights_file(folder):
                    entries.append(ModelEntry(item["name"], str(folder), description))
        return entries

    def discovered(self) -> list[ModelEntry]:
        """Run folders under checkpoints/ holding a checkpoint (a run in progress has none until it stops)."""
        if not self.checkpoints_dir.is_dir():
            return []
        folders = sorted(p for p in self.checkpoints_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [ModelEntry(folder.name, str(folder)) for folder in folders if weights_file(folder) and servable(folder)]

    def entries(self) -> dict[str, ModelEntry]:
        configured = self.configured()
        known = {Path(e.location).resolve() for e in configured if not e.on_hub}
        extra = [e for e in self.discovered() if Path(e.location).resolve() not in known]
        return {e.name: e for e in configured + extra}

    def names(self) -> list[str]:
        """The display names of the models offered now."""
        return list(self.entries())

    def run_folders(self, entries: dict[str, ModelEntry] | None = None) -> dict[str, Path]:
        """Every offered local model (of `entries`, default: `self.entries()`), plus runs still training, that has
        metrics to plot."""
        entries = self.entries() if entries is None else entries
        folders = {e.name: Path(e.location) for e in entries.values() if not e.on_hub}
        known = {folder.resolve() for folder in folders.values()}
        if self.checkpoints_dir.is_dir():
            for folder in sorted(self.checkpoints_dir.iterdir()):
                if folder.resolve() not in known:
                    folders[folder.name] = folder
        return {name: folder for name, folder in folders.items() if (folder / METRICS_FILE).is_file()}

    # ------------------------------------------------------------------------------------------------------------
    # Loading, cached

    def entry(self, name: str) -> ModelEntry:
        entries = self.entries()
        if name not in entries:
            raise UserError(f"Unknown model '{name}'. Choose one of: {', '.join(entries) or 'none available'}.")
        return entries[name]

    def load(self, name: str):
        """(model, tokenizer), loaded once per checkpoint version and kept while the cache bound allows."""
        entry = self.entry(name)
        version = entry.version()
        with self._load_lock:
            cached = self._loaded.get(name)
            if cached and cached[0] == version:
                self._loaded.move_to_end(name)
                return cached[1:]
            from transformers import AutoTokenizer

            try:
                model = load_model(entry.location)
            except UserError as error:  # its message names the server's folder: for the log only
                logger.warning("model %r: %s", name, error)
                raise UserError(f"cannot load the checkpoint of '{name}': its files are damaged or incomplete.") \
                    from error
            try:
                tokenizer = AutoTokenizer.from_pretrained(entry.location)
            except (OSError, ValueError) as error:
                logger.warning("model %r: tokenizer: %s", name, error)
                raise UserError(f"cannot load the tokenizer of '{name}'.") from error
            if tokenizer.mask_token_id is None:
                raise UserError(f"the tokenizer of '{name}' has no [MASK] token")
            self._loaded.pop(name, None)  # an older version goes before the new one counts against the bound
            self._loaded[name] = (version, model, tokenizer)
            self._evict()
            return model, tokenizer

    def loaded(self) -> list[str]:
        """Names of the models in memory, least recently used first."""
        return list(self._loaded)

    def _evict(self) -> None:
        """Drop the least recently used models beyond `extra_models`; configured (shipped) ones are never dropped."""
        pinned = {entry.name for entry in self.configured()}
        others = [name for name in self._loaded if name not in pinned]
        for name in others[: max(0, len(others) - self.extra_models)]:
            del self._loaded[name]

    # ------------------------------------------------------------------------------------------------------------
    # Predictions

    def predict(self, name: str, text: str, top_k: int) -> dict:
        """One model's answer for an already checked text (see `check_text`)."""
        return self.predict_later(name, text, top_k).result()

    def predict_later(self, name: str, text: str, top_k: int) -> Future:
        """The future answer for an already checked text: from the answer cache, or the next batched pass."""
        key = (name, self.entry(name).version(), text, int(top_k))  # a rewritten checkpoint has a new version
        cached = self._answers.get(key)
        if cached is not None:
            future: Future = Future()
            future.set_result(copy.deepcopy(cached))  # each caller may change its own copy
            return future

        def remember(done: Future) -> None:
            if done.exception() is None and len(text) <= ANSWER_CACHE_MAX_CHARS:
                self._answers.put(key, copy.deepcopy(done.result()))

        future = self._batcher.submit((name, text, int(top_k)))
        future.add_done_callback(remember)
        return future

    def _run_batch(self, requests: list[tuple[str, str, int]]) -> list:
        """Answers (or UserErrors) for (name, text, top_k) requests: one padded forward pass per model."""
        results: list = [None] * len(requests)
        by_model: dict[str, list[int]] = {}
        for index, (name, _, _) in enumerate(requests):
            by_model.setdefault(name, []).append(index)
        for name, indices in by_model.items():
            try:
                model, tokenizer = self.load(name)
                encoded = tokenizer([requests[i][1] for i in indices])["input_ids"]
                fits = []
                for i, ids in zip(indices, encoded):
                    try:
                        check_length(len(ids), model)
                        fits.append((i, ids))
                    except UserError as error:
                        results[i] = error
                guesses = masked_top_k(model, [ids for _, ids in fits], tokenizer.mask_token_id,
                                       tokenizer.pad_token_id, max((requests[i][2] for i, _ in fits), default=1),
                                       self._encoders(model))
                for (i, _), guess in zip(fits, guesses):
                    results[i] = self.answer_from(name, tokenizer, requests[i][1], requests[i][2], guess)
            except Exception as error:  # noqa: BLE001 - one failing model errors only its own requests
                for i in indices:
                    results[i] = error
        return results

    @staticmethod
    def answer_from(name: str, tokenizer, text: str, top_k: int, guesses) -> dict:
        """The JSON answer of one model for one text, from its forward-pass result (mlm.serve.inference.MaskGuesses)."""
        input_ids, positions = torch.tensor([guesses.input_ids]), guesses.positions
        scores, token_ids = guesses.scores[:, :top_k], guesses.token_ids[:, :top_k]
        if not scores.isfinite().all():  # NaN is not JSON: a broken model answers with an error, never with NaN
            raise UserError(f"The model '{name}' gives no usable scores (not finite numbers): it is broken.")
        masks = [
            {"index": int(position),
             "candidates": [readable.candidate(text, number, token, score)
                            for token, score in zip(tokenizer.convert_ids_to_tokens(ids.tolist()), row.tolist())]}
            for number, (position, ids, row) in enumerate(zip(positions, token_ids, scores))
        ]
        tokens = tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
        return {"model": name, "tokens": tokens, "masks": masks,
                "filled": fill_in(text, [m["candidates"][0]["token"] for m in masks]),
                "notes": readable.text_notes(text, tokens, set(tokenizer.all_special_tokens), tokenizer.unk_token),
                # an uncased model reads and answers in lower case: "France is france." needs saying so
                "uncased": bool(getattr(tokenizer, "do_lower_case", False))}

    def answer(self, name: str, text: str, top_k) -> dict:
        """One side of the comparison: predictions, or the reason there are none (never an exception)."""
        return one_side(name, self.ask(name, text, top_k).result)

    def fill_mask(self, text: str, top_k: int, left_model: str, right_model: str) -> dict:
        """Both models' top-k guesses for every [MASK] of `text`: {"left": answer, "right": answer}."""
        left, right = self.ask(left_model, text, top_k), self.ask(right_model, text, top_k)  # one batch for both
        return {"left": one_side(left_model, left.result), "right": one_side(right_model, right.result)}

    def ask(self, name: str, text: str, top_k) -> Future:
        """Check the text, then the future answer; a refusal is a future that raises it."""
        try:
            return self.predict_later(name, check_text(text, top_k), top_k)
        except Exception as error:  # noqa: BLE001 - reported by `one_side`, like a failed forward pass
            refused: Future = Future()
            refused.set_exception(error)
            return refused

    # ------------------------------------------------------------------------------------------------------------
    # Model cards

    def card(self, name: str) -> dict:
        """What a model is, how big, trained on what, how good (see mlm.serve.cards)."""
        return model_card(self.entry(name))


def encode(model, tokenizer, text: str, limit: int | None = None) -> dict:
    """The model's inputs for a checked text, or UserError when it has more tokens than the model (or `limit`) reads."""
    encoded = tokenizer(text, return_tensors="pt")
    check_length(encoded["input_ids"].shape[1], model, limit)
    return encoded


def one_side(name: str, compute) -> dict:
    """`compute()`, or {"model", "error"}: one model's column never raises, whatever goes wrong. The message is in
    the user's terms only: an unexpected failure's class, text and traceback go to the server log."""
    try:
        return compute()
    except UserError as error:
        return {"model": name, "error": str(error)}
    except Exception:  # noqa: BLE001 - a model that fails in any other way errors only its own column
        logger.exception("model %r failed", name)
        return {"model": name, "error": f"The model '{name}' failed on this text; try another model."}


def fill_in(text: str, guesses: list[str]) -> str:
    """The student's own text with each [MASK] replaced, in order, by a guess (a ## piece joins its word)."""
    pieces = text.split(MASK)
    filled = pieces[0]
    for guess, piece in zip(guesses, pieces[1:]):
        if guess.startswith("##"):
            filled = filled.rstrip() + guess[2:]
        else:
            filled += guess
        filled += piece
    return filled
