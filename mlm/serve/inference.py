"""The forward pass that serves a lecture hall: many students' sentences in one padded pass, on one worker thread.

On 2 CPU cores one request at a time is mostly overhead (a 3-layer model on 12 tokens); the same pass over 16
sentences costs little more than over one. `MicroBatcher` lets every request thread submit its sentence and wait:
a single worker takes whatever has arrived while the previous batch ran and computes it as the next batch. A lone
request waits for nothing, a burst shares forward passes, and two passes never fight over the cores.

`masked_top_k` pads with an attention mask, so a sentence's scores do not depend on what it was batched with
(equal to `pipeline("fill-mask")` within float rounding). No Gradio and no model registry here.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

# Padded tokens per forward pass: a batch of long sentences is split so its attention stays small (8 x 512).
MAX_BATCH_TOKENS = 4096


@dataclass
class MaskGuesses:
    """One sentence's result: its token ids, the [MASK] positions, and per mask the top-k probabilities and ids."""
    input_ids: list[int]
    positions: list[int]
    scores: torch.Tensor  # (masks, k), descending
    token_ids: torch.Tensor  # (masks, k)


def chunks_by_tokens(lengths: Sequence[int], max_tokens: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """Indices of `lengths` grouped so that (sentences x longest) stays within max_tokens; similar lengths
    together, so little is spent on padding."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for index in order:
        if groups and (len(groups[-1]) + 1) * lengths[index] <= max_tokens:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


class TracedEncoders:
    """Each model's encoder traced into one TorchScript graph, once per model object: `encoders(model)(ids, mask)`.

    The inference worker shares Python with the web server's event loop. An eager forward pass comes back to Python
    (and waits for the GIL) after each of its hundreds of ops, so under load it crawled behind the server's work; a
    traced one runs the whole pass in C++ without the GIL. Same ops on the same weights (shared, not copied): the
    same numbers. It is traced on a padded batch, so the attention-mask path is in the graph whatever a batch holds.
    Kept, although PyTorch marks TorchScript deprecated, for what an A/B against the eager encoder measured
    (benchmarks/records/2026-12-08_cpu-xeon-amx_torchscript-serving); mlm.serve.answers.Predictor switches it.
    """

    def __init__(self):
        self._traced: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, model) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        with self._lock:
            traced = self._traced.get(model)
            if traced is None:
                example = torch.tensor([[1, 2, 3, 4], [1, 2, 0, 0]])
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the tracer's notes on Python values it keeps as constants
                    traced = torch.jit.trace(model.base_model, (example, (example != 0).long()), strict=False,
                                             check_trace=False)
                self._traced[model] = traced
        return lambda ids, attention: traced(ids, attention)["last_hidden_state"]


def masked_top_k(model, input_ids: Sequence[Sequence[int]], mask_id: int, pad_id: int, k: int,
                 encoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[MaskGuesses]:
    """Top-k guesses at every `mask_id` of each tokenised sentence, from one padded forward pass per chunk.

    The encoder runs on all positions, the 30,522-way output layer only at the masks, in float32 softmax: the same
    numbers as the fill-mask pipeline, which computes the output layer everywhere and then picks the masks.
    `encoder(ids, attention_mask)` gives the last hidden states (default: the model's own encoder, eagerly).
    """
    if encoder is None:
        def encoder(ids, attention):
            return model.base_model(input_ids=ids, attention_mask=attention).last_hidden_state
    results: list[MaskGuesses | None] = [None] * len(input_ids)
    for group in chunks_by_tokens([len(ids) for ids in input_ids]):
        longest = max(len(input_ids[i]) for i in group)
        ids = torch.full((len(group), longest), pad_id, dtype=torch.long)
        attention = torch.zeros((len(group), longest), dtype=torch.long)
        for row, index in enumerate(group):
            ids[row, : len(input_ids[index])] = torch.tensor(input_ids[index])
            attention[row, : len(input_ids[index])] = 1
        with torch.inference_mode():
            hidden = encoder(ids, attention)
            rows, positions = (ids == mask_id).nonzero(as_tuple=True)
            probabilities = model.cls(hidden[rows, positions]).float().softmax(dim=-1)
            scores, token_ids = probabilities.topk(min(k, probabilities.shape[-1]), dim=-1)
        for row, index in enumerate(group):
            mine = rows == row
            results[index] = MaskGuesses(list(input_ids[index]), positions[mine].tolist(), scores[mine], token_ids[mine])
    return results


class MicroBatcher:
    """Runs `run_batch(payloads) -> results` on one daemon thread over whatever was submitted meanwhile.

    `run_batch` returns one result per payload, in order; a result that is an exception is raised to that payload's
    waiter only. If `run_batch` itself raises, every payload of the batch gets the exception.
    """

    def __init__(self, run_batch: Callable[[list], list], max_batch: int = 64):
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._pending: list[tuple[object, Future]] = []
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None

    def submit(self, payload) -> Future:
        future: Future = Future()
        with self._wake:
            self._pending.append((payload, future))
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="mlm-inference", daemon=True)
                self._worker.start()
            self._wake.notify()
        return future

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
            try:
                results = self._run_batch([payload for payload, _ in batch])
            except Exception as error:  # noqa: BLE001 - the worker must outlive any batch; waiters get the error
                results = [error] * len(batch)
            for (_, future), result in zip(batch, results):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
