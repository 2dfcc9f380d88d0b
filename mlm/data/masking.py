"""Dynamic masking of token blocks, BERT's recipe, as plain tensor code on whatever device the batch is on.

15% of the non-special tokens are chosen; of those 80% become [MASK], 10% a random token and 10% stay, the recipe of
`DataCollatorForLanguageModeling`. Nothing here syncs with the host, so a step that masks its own batch can run
inside a captured CUDA graph. Validation uses masks drawn once from a fixed seed, so losses compare across epochs,
runs and machines.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # the label of a position nothing is predicted at (what torch's cross-entropy skips)
VALID_MASK_SEED = 1234  # fixed: validation masks must not depend on the training seed


@dataclass(frozen=True)
class MaskingSpec:
    """What masking needs to know about the tokenizer, as plain numbers (cheap to ship to any device)."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float = 0.15

    @classmethod
    def from_tokenizer(cls, tokenizer, probability: float = 0.15) -> "MaskingSpec":
        return cls(tokenizer.mask_token_id, len(tokenizer), tuple(sorted(tokenizer.all_special_ids)), probability)

    def is_special(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Which ids are special tokens, by one lookup: a GPU step is a few hundred short kernels, and comparing
        with each special id would add one per id. The table is made on the first call, before any graph capture."""
        return _special_table(self.special_ids, self.vocab_size, input_ids.device)[input_ids]


@functools.cache
def _special_table(special_ids: tuple[int, ...], vocab_size: int, device: torch.device) -> torch.Tensor:
    table = torch.zeros(max((vocab_size, *special_ids)) + 1, dtype=torch.bool)
    table[list(special_ids)] = True
    return table.to(device)


def mask_tokens(input_ids: torch.Tensor, spec: MaskingSpec, generator: torch.Generator | None = None,
                probability: torch.Tensor | None = None):
    """(inputs, labels) with BERT's 80/10/10 masking; labels are IGNORE_INDEX where nothing is predicted.

    `probability`, a 0-dim tensor on the batch's device, replaces `spec.probability`: a captured CUDA graph then reads
    its current value at every replay, so the masking rate can follow a schedule.

    Two uniform draws replace DataCollatorForLanguageModeling's three Bernoulli draws with the same distribution:
    u < p chooses a token; then v < 0.8 -> [MASK], 0.8 <= v < 0.9 -> random token, else kept.
    """
    device = input_ids.device
    special = spec.is_special(input_ids)
    rate = spec.probability if probability is None else probability
    chosen = (torch.rand(input_ids.shape, device=device, generator=generator) < rate) & ~special
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    action = torch.rand(input_ids.shape, device=device, generator=generator)
    random_words = torch.randint(spec.vocab_size, input_ids.shape, device=device, generator=generator)
    inputs = torch.where(chosen & (action < 0.8), spec.mask_id, input_ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_words, inputs)
    return inputs, labels


def fixed_validation_masks(blocks: torch.Tensor, spec: MaskingSpec):
    """Validation inputs/labels masked once at 15% from a fixed seed, identical on every machine and run."""
    generator = torch.Generator().manual_seed(VALID_MASK_SEED)
    return mask_tokens(blocks, MaskingSpec(spec.mask_id, spec.vocab_size, spec.special_ids, 0.15), generator)


def max_predictions(num_tokens: int, probability: float) -> int:
    """A static cap on masked positions per batch: the mean plus six standard deviations of the binomial count.

    The fast path gathers this many positions so shapes never change (compilation and CUDA graphs need that).
    Exceeding it has probability below 1e-9 per batch; the overflow would only drop a few targets from one loss.
    """
    mean = num_tokens * probability
    return min(num_tokens, int(mean + 6 * math.sqrt(mean * (1 - probability)) + 8))
