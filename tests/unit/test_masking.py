"""BERT's 80/10/10 masking, the fixed validation masks and the cap on predictions per batch."""

from __future__ import annotations

import torch

from mlm.data.masking import IGNORE_INDEX, MaskingSpec, fixed_validation_masks, mask_tokens, max_predictions
from test_tokenizer import tokenizer  # noqa: F401 - the same fixture


def test_masking_statistics_follow_bert(tokenizer):
    spec = MaskingSpec.from_tokenizer(tokenizer, 0.15)
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (400, 128))
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    inputs, labels = mask_tokens(ids, spec)

    chosen = labels != IGNORE_INDEX
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # never a special token
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    rate = chosen.sum().item() / (400 * 126)
    assert abs(rate - 0.15) < 0.005
    as_mask = (inputs[chosen] == tokenizer.mask_token_id).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.015
    assert abs(kept - 0.1) < 0.015  # (a random replacement equal to the original is rare enough to ignore)
    assert abs(1 - as_mask - kept - 0.1) < 0.015


def test_special_token_lookup_equals_comparing_with_each_special_id(tokenizer):
    """The masking's one-kernel lookup leaves masks (the fixed validation masks too) as comparing ids did."""
    spec = MaskingSpec.from_tokenizer(tokenizer)
    ids = torch.arange(len(tokenizer)).view(1, -1)
    by_comparison = torch.zeros_like(ids, dtype=torch.bool)
    for special_id in tokenizer.all_special_ids:
        by_comparison |= ids == special_id
    assert torch.equal(spec.is_special(ids), by_comparison) and by_comparison.sum() == len(spec.special_ids) == 5


def test_masking_rate_is_configurable(tokenizer):
    ids = torch.randint(1000, 30000, (200, 128))
    _, labels = mask_tokens(ids, MaskingSpec.from_tokenizer(tokenizer, 0.4))
    assert abs((labels != IGNORE_INDEX).float().mean().item() - 0.4) < 0.01


def test_validation_masks_are_fixed_and_always_15_percent(tokenizer):
    blocks = torch.randint(1000, 30000, (64, 128))
    training_spec = MaskingSpec.from_tokenizer(tokenizer, 0.3)
    first, second = fixed_validation_masks(blocks, training_spec), fixed_validation_masks(blocks, training_spec)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert abs((first[1] != IGNORE_INDEX).float().mean().item() - 0.15) < 0.02


def test_prediction_cap_covers_the_binomial_tail():
    cap = max_predictions(1024, 0.15)
    assert 1024 * 0.15 + 5 * (1024 * 0.15 * 0.85) ** 0.5 < cap <= 1024
