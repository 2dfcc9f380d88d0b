"""Fill-mask answers as plain JSON (no Gradio here): the models' guesses turned into what a student reads.

Predictions run the encoder once and the 30,522-way output layer only at the [MASK] positions, which gives the same
scores as `transformers.pipeline("fill-mask")` for a fraction of the work. Concurrent requests share padded forward
passes on one worker thread (mlm.serve.inference), and answers to repeated questions (the examples, the default
sentence) come from a small cache.

What reaches a client is in the user's terms only: server paths and exception details go to the server log.
"""

from __future__ import annotations

import copy
import logging
from concurrent.futures import Future

import torch

from mlm.errors import UserError
from mlm.serve import readable
from mlm.serve.checks import MASK, check_length, check_text
from mlm.serve.inference import MicroBatcher, TracedEncoders, masked_top_k
from mlm.serve.lru import LRU
from mlm.serve.registry import ModelRegistry

logger = logging.getLogger(__name__)

ANSWER_CACHE_SIZE = 256
# Short sentences only: an answer repeats its text in each candidate's "sequence" (up to 200 times), so this bounds
# the cache to about 15 MB at worst; a typical answer is a few kB.
ANSWER_CACHE_MAX_CHARS = 300


class Predictor:
    """fill_mask for the registry's models: checked text in, one JSON answer per model out, never an exception.

    `torchscript`: the encoders run traced (mlm.serve.inference.TracedEncoders), which serves more answers a second
    than the eager encoder and gives the same numbers within 1e-6 (the A/B record with its figures:
    benchmarks/records/2026-12-08_cpu-xeon-amx_torchscript-serving); False runs them eagerly, for a torch without
    TorchScript (app.py: MLM_TORCHSCRIPT=0)."""

    def __init__(self, registry: ModelRegistry, torchscript: bool = True):
        self.registry = registry
        self._encoders = TracedEncoders() if torchscript else None
        self._answers: LRU[tuple, dict] = LRU(ANSWER_CACHE_SIZE)  # (name, version, text, top_k) -> answer
        self._batcher = MicroBatcher(self._run_batch)

    def fill_mask(self, text: str, top_k: int, left_model: str, right_model: str) -> dict:
        """Both models' top-k guesses for every [MASK] of `text`: {"left": answer, "right": answer}."""
        left, right = self.ask(left_model, text, top_k), self.ask(right_model, text, top_k)  # one batch for both
        return {"left": one_side(left_model, left.result), "right": one_side(right_model, right.result)}

    def answer(self, name: str, text: str, top_k) -> dict:
        """One side of the comparison: predictions, or the reason there are none (never an exception)."""
        return one_side(name, self.ask(name, text, top_k).result)

    def ask(self, name: str, text: str, top_k) -> Future:
        """Check the text, then the future answer; a refusal is a future that raises it."""
        try:
            return self.predict_later(name, check_text(text, top_k), top_k)
        except Exception as error:  # noqa: BLE001 - reported by `one_side`, like a failed forward pass
            refused: Future = Future()
            refused.set_exception(error)
            return refused

    def predict(self, name: str, text: str, top_k: int) -> dict:
        """One model's answer for an already checked text (see `check_text`)."""
        return self.predict_later(name, text, top_k).result()

    def predict_later(self, name: str, text: str, top_k: int) -> Future:
        """The future answer for an already checked text: from the answer cache, or the next batched pass."""
        key = (name, self.registry.entry(name).version(), text, int(top_k))  # a rewritten checkpoint: a new version
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
                model, tokenizer = self.registry.load(name)
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
                                       self._encoders(model) if self._encoders else None)
                for (i, _), guess in zip(fits, guesses):
                    results[i] = answer_from(name, tokenizer, requests[i][1], requests[i][2], guess)
            except Exception as error:  # noqa: BLE001 - one failing model errors only its own requests
                for i in indices:
                    results[i] = error
        return results


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
