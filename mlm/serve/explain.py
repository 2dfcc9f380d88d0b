"""Why a model guesses what it guesses: the computations behind the Explain tab and its API (no Gradio here).

  * candidate scoring: the probability and rank of words the student names, at each [MASK];
  * layer by layer (the logit lens): the model's own MLM head read on the embeddings and on every encoder layer;
  * attention: every layer's and head's attention weights (the eager implementation, switched on for this call only);
  * pseudo-log-likelihood (Salazar et al. 2020): each token scored with that token masked, all in one batch;
  * the training corruption: the package's own `mask_tokens` on the student's sentence.

Models come from the app's ModelRegistry, so Compare and Explain share one copy of each. Every `Explainer` method is
an API endpoint: it returns JSON, and for a bad input or a broken model {"model", "error"} instead of raising.
"""

from __future__ import annotations

import math
import random
import re
import threading
from contextlib import contextmanager

import torch

from mlm.data.masking import IGNORE_INDEX, MaskingSpec, mask_tokens
from mlm.data.tokenizer import load_tokenizer
from mlm.errors import UserError
from mlm.model.build import bert_for_masked_lm
from mlm.serve.answers import one_side
from mlm.serve.checks import MASK, check_masked, check_sentence, check_top_k, encode

MAX_WORDS = 20
# Attention returns layers x heads x tokens^2 weights and pseudo-log-likelihood runs one masked copy of the sentence
# per token: both grow with the square of the length, so these views read sentences, not documents.
MAX_VIEW_TOKENS = 128
TOKENS_PER_PASS = 4096  # pseudo-log-likelihood batches at most this many tokens per forward pass (memory bound)
MASK_PROBABILITY_RANGE = (0.05, 0.5)
ROLES = ("masked", "random", "kept")  # what happens to a token picked for prediction: 80% / 10% / 10%
WORD_SEPARATORS = re.compile(r"[,\n]")
_eager_switch = threading.Lock()  # two attention calls must not restore the fast path under each other


def mask_positions(tokenizer, input_ids: torch.Tensor) -> torch.Tensor:
    return (input_ids[0] == tokenizer.mask_token_id).nonzero().squeeze(1)


def parse_words(words) -> list[str]:
    """'paris, london' (or a list) -> ['paris', 'london']: stripped, blanks and repeats dropped."""
    items = words if isinstance(words, (list, tuple)) else WORD_SEPARATORS.split(str(words or ""))
    parsed = list(dict.fromkeys(str(w).strip() for w in items if str(w).strip()))
    if not parsed:
        raise UserError("Type one or more words to score, separated by commas.")
    if len(parsed) > MAX_WORDS:
        raise UserError(f"Score at most {MAX_WORDS} words at a time (you gave {len(parsed)}).")
    return parsed


def word_piece(tokenizer, word: str) -> tuple[int, list[str]]:
    """(id scored, all WordPieces of the word), as the fill-mask pipeline's `targets`: a vocabulary entry as is,
    anything else by its first WordPiece."""
    token_id = tokenizer.convert_tokens_to_ids(word)
    if token_id is not None and (token_id != tokenizer.unk_token_id or word == tokenizer.unk_token):
        return token_id, [word]
    pieces = tokenizer.tokenize(word)
    if not pieces:
        raise UserError(f"'{word}' has no WordPiece this model knows.")
    return tokenizer.convert_tokens_to_ids(pieces[0]), pieces


# ----------------------------------------------------------------------------------------------------------------
# The computations, on one (model, tokenizer) and an already checked text


def candidate_scores(model, tokenizer, text: str, words: list[str]) -> list[dict]:
    """Per [MASK]: each word's probability and rank (1 = the model's top guess) over the whole vocabulary."""
    model = bert_for_masked_lm(model)
    encoded = encode(model, tokenizer, text)
    positions = mask_positions(tokenizer, encoded["input_ids"])
    targets = [(word, *word_piece(tokenizer, word)) for word in words]
    with torch.inference_mode():
        hidden = model.bert(**encoded).last_hidden_state[0, positions]
        probabilities = model.cls(hidden).float().softmax(dim=-1)
    masks = []
    for position, row in zip(positions.tolist(), probabilities):
        scored = []
        for word, token_id, pieces in targets:
            score = row[token_id]
            scored.append({"word": word, "piece": pieces[0], "pieces": pieces, "score": float(score),
                           "rank": int((row > score).sum()) + 1})
        masks.append({"index": position, "words": scored})
    return masks


def layer_top_k(model, tokenizer, text: str, top_k: int) -> list[dict]:
    """Per [MASK]: the top-k guesses of the MLM head read on the embeddings (layer 0) and after each layer.

    BERT's head (transform + decoder tied to the embeddings) is trained on the last layer only; applying it to
    earlier layers shows when the answer forms. The last entry is exactly the model's prediction."""
    model = bert_for_masked_lm(model)
    encoded = encode(model, tokenizer, text)
    positions = mask_positions(tokenizer, encoded["input_ids"])
    with torch.inference_mode():
        layers = model.bert(**encoded, output_hidden_states=True).hidden_states
        hidden = torch.stack([layer[0, positions] for layer in layers])  # (layers + 1, masks, hidden)
        scores, token_ids = model.cls(hidden).float().softmax(dim=-1).topk(int(top_k), dim=-1)
    masks = []
    for mask_number, position in enumerate(positions.tolist()):
        rows = []
        for layer, (ids, row) in enumerate(zip(token_ids[:, mask_number], scores[:, mask_number])):
            rows.append({"layer": layer, "candidates": [
                {"token": token, "score": float(score)}
                for token, score in zip(tokenizer.convert_ids_to_tokens(ids.tolist()), row.tolist())]})
        masks.append({"index": position, "layers": rows})
    return masks


@contextmanager
def eager_attention(model):
    """The eager attention implementation for the duration of the block, then the model's own (SDPA) again.

    SDPA never forms the attention matrix, so it cannot return it; eager does, more slowly. The switch is a
    config flag on the shared model, so Compare keeps the fast path."""
    with _eager_switch:
        previous = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            yield
        finally:
            model.set_attn_implementation(previous)


def attention_weights(model, tokenizer, text: str) -> tuple[list[str], torch.Tensor]:
    """(tokens, weights of shape (layers, heads, query, key)); each row is a softmax and sums to 1."""
    model = bert_for_masked_lm(model)
    encoded = encode(model, tokenizer, text, MAX_VIEW_TOKENS)
    with eager_attention(model), torch.inference_mode():
        attentions = model.bert(**encoded, output_attentions=True).attentions
    weights = torch.cat(attentions).float()  # each layer is (1, heads, query, key)
    return tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist()), weights


def token_log_probs(model, tokenizer, text: str) -> tuple[list[str], torch.Tensor]:
    """(scored tokens, natural-log probability of each with only its own position masked); [CLS]/[SEP] not scored.

    One copy of the sentence per scored token, each with a different position masked, go through the encoder
    together (several passes only past TOKENS_PER_PASS tokens); the output layer runs only at the masked spots."""
    model = bert_for_masked_lm(model)
    encoded = encode(model, tokenizer, text, MAX_VIEW_TOKENS)
    input_ids = encoded["input_ids"][0]
    if (input_ids == tokenizer.mask_token_id).any():
        raise UserError(f"Write the whole sentence, without {MASK}: every word is masked in turn.")
    boundaries = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    positions = torch.tensor([i for i, t in enumerate(input_ids.tolist()) if t not in boundaries], dtype=torch.long)
    if len(positions) == 0:
        raise UserError("There is no word to score in this sentence.")
    rows = torch.arange(len(positions))
    batch = {name: values.expand(len(positions), -1) for name, values in encoded.items()}
    batch["input_ids"] = batch["input_ids"].clone()
    batch["input_ids"][rows, positions] = tokenizer.mask_token_id
    per_pass = max(1, TOKENS_PER_PASS // len(input_ids))
    log_probs = []
    with torch.inference_mode():
        for start in range(0, len(positions), per_pass):
            part = slice(start, start + per_pass)
            hidden = model.bert(**{name: values[part] for name, values in batch.items()}).last_hidden_state
            logits = model.cls(hidden[rows[part] - start, positions[part]]).float()
            log_probs.append(logits.log_softmax(dim=-1).gather(1, input_ids[positions[part], None]).squeeze(1))
    return tokenizer.convert_ids_to_tokens(input_ids[positions].tolist()), torch.cat(log_probs)


def corrupt(tokenizer, text: str, probability: float, seed: int) -> list[dict]:
    """The sentence as one training step would see it: `mask_tokens`, the training code itself, on its tokens."""
    input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
    if input_ids.shape[1] > MAX_VIEW_TOKENS:
        raise UserError(f"The text is too long: {input_ids.shape[1]} tokens, this view reads at most "
                        f"{MAX_VIEW_TOKENS}.")
    spec = MaskingSpec.from_tokenizer(tokenizer, probability)
    inputs, labels = mask_tokens(input_ids, spec, torch.Generator().manual_seed(seed))
    originals, shown = (tokenizer.convert_ids_to_tokens(ids[0].tolist()) for ids in (input_ids, inputs))
    tokens = []
    for original, seen, picked in zip(originals, shown, (labels[0] != IGNORE_INDEX).tolist()):
        # A random draw that hits the original word (1 in 30,522) is, to the model, the word kept: it says so.
        role = (None if not picked else "masked" if seen == tokenizer.mask_token else
                "kept" if seen == original else "random")
        tokens.append({"token": original, "shown": seen, "role": role})
    return tokens


# ----------------------------------------------------------------------------------------------------------------
# The API: one model per call, named as the app offers it; JSON in, JSON out, errors as {"model", "error"}


class Explainer:
    """The Explain tab's computations on the app's shared ModelRegistry."""

    def __init__(self, registry):
        self.registry = registry
        self._tokenizer = None

    def score_candidates(self, text: str, words: str, model: str) -> dict:
        """Each word's probability and rank at every [MASK] of `text` (words: comma-separated, or a list)."""
        return one_side(model, lambda: {"model": model, "masks": candidate_scores(
            *self.registry.load(model), check_masked(text), parse_words(words))})

    def layer_guesses(self, text: str, top_k: int, model: str) -> dict:
        """The top-k guesses at every [MASK] after the embeddings (layer 0) and after each encoder layer."""
        return one_side(model, lambda: {"model": model, "masks": layer_top_k(
            *self.registry.load(model), check_masked(text), check_top_k(top_k))})

    def attention(self, text: str, model: str) -> dict:
        """Attention weights of every layer and head: layers[layer][head][query][key]."""
        def compute():
            tokens, weights = attention_weights(*self.registry.load(model), check_sentence(text))
            return {"model": model, "tokens": tokens, "layers": weights.tolist()}
        return one_side(model, compute)

    def score_sentence(self, text: str, model: str) -> dict:
        """Pseudo-log-likelihood of a sentence (no [MASK]): each token's log-probability with it masked."""
        def compute():
            tokens, log_probs = token_log_probs(*self.registry.load(model), check_sentence(text))
            total = float(log_probs.double().sum())  # in float64: the sum of the float log-probs the JSON lists
            return {"model": model,
                    "tokens": [{"token": token, "log_prob": float(p)} for token, p in zip(tokens, log_probs)],
                    "pseudo_log_likelihood": total,
                    "pseudo_perplexity": math.exp(-total / len(tokens))}
        return one_side(model, compute)

    def training_view(self, text: str, mask_probability: float = 0.15, seed: int | None = None) -> dict:
        """The sentence corrupted as in training: {"tokens": [{"token", "shown", "role"}], "mask_probability",
        "seed"}; role is "masked" / "random" / "kept" for a token the model must predict, else None. Without a
        seed one is drawn (and returned, to repeat the sample)."""
        low, high = MASK_PROBABILITY_RANGE
        try:
            text = check_sentence(text)
            if not isinstance(mask_probability, (int, float)) or not low <= mask_probability <= high:
                raise UserError(f"The masking probability must be from {low} to {high}.")
            seed = random.randrange(2**31) if seed is None or seed == "" else seed
            if not isinstance(seed, (int, float)) or seed != int(seed) or not 0 <= seed < 2**63:
                raise UserError("The seed must be a whole number, 0 or more.")
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer()  # the tokenizer training uses by default (bert-base-uncased)
            tokens = corrupt(self._tokenizer, text, float(mask_probability), int(seed))
        except UserError as error:
            return {"error": str(error)}
        return {"tokens": tokens, "mask_probability": float(mask_probability), "seed": int(seed)}
