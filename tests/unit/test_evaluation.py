"""Validation metrics (mlm/train/evaluation.py) against independent computations: torch's topk for the hits, and the
shipped model's own `BertForMaskedLM(...).loss` over real WikiText-2 validation blocks for the loss."""

from __future__ import annotations

import pytest
import torch

from conftest import REPO, WIKITEXT_DIR
from mlm.data.blocks import load_mlm_data
from mlm.data.masking import IGNORE_INDEX, MaskingSpec, fixed_validation_masks
from mlm.train.evaluation import batch_totals, target_ranks, validation_totals
from mlm.model.files import load_model
from mlm.train.objective import MaskedLMObjective


def test_ranks_give_the_hits_topk_gives():
    torch.manual_seed(0)
    logits = torch.randn(300, 1000)  # continuous values: no ties, so topk's order is unambiguous
    targets = torch.randint(0, 1000, (300,))
    top5 = logits.topk(5, dim=1).indices
    targets[:100] = top5[torch.arange(100), torch.arange(100) % 5]  # a third of the rows hit, at each of the five ranks
    targets[290:] = IGNORE_INDEX
    counted = targets != IGNORE_INDEX
    hits = (top5 == targets[:, None]) & counted[:, None]
    loss, count, top1, top5_hits = batch_totals(logits, targets).tolist()
    assert (count, top1, top5_hits) == (290, hits[:, 0].sum().item(), hits.any(dim=1).sum().item())
    assert top1 == 20 and top5_hits >= 100
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits[:290], targets[:290], reduction="sum").item(),
                                 rel=1e-6)
    assert torch.equal(target_ranks(logits, targets)[:100], torch.arange(100) % 5)


def test_a_tie_is_not_a_hit():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [1.0, 3.0, 2.0, 0.0]])
    targets = torch.tensor([2, 1])
    assert target_ranks(logits, targets).tolist() == [1, 0]  # row 0: word 1 ties the target and counts above it
    assert batch_totals(logits, targets)[2:].tolist() == [1.0, 2.0]


def test_validation_totals_equal_a_hand_loop_over_the_shipped_model():
    """Real validation blocks, the fixed masks, a trained model (so that hits happen), a last batch shorter than the
    others: the loss against `BertForMaskedLM(...).loss` per batch, the hits against topk, position by position."""
    data = load_mlm_data(str(WIKITEXT_DIR), max_train_blocks=2, max_eval_blocks=7)
    inputs, labels = fixed_validation_masks(data.valid_blocks, MaskingSpec.from_tokenizer(data.tokenizer))
    model = load_model(REPO / "checkpoints" / "scratch-wikitext2").eval()
    counts = (labels != IGNORE_INDEX).sum(dim=1)
    objective = MaskedLMObjective(model, int(counts.max()) * 3)
    totals = validation_totals(objective, inputs, labels, batch_size=3, autocast=None, abandon=lambda index: False)

    loss_sum, hits1, hits5 = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(inputs), 3):
            out = model(input_ids=inputs[start:start + 3], labels=labels[start:start + 3])
            n = (labels[start:start + 3] != IGNORE_INDEX).sum().item()
            loss_sum += out.loss.item() * n
            for row, column in (labels[start:start + 3] != IGNORE_INDEX).nonzero().tolist():
                top5 = out.logits[row, column].topk(5).indices.tolist()
                target = labels[start + row, column].item()
                hits1 += top5[0] == target
                hits5 += target in top5
    assert totals[1].item() == counts.sum().item() > 100
    assert totals[0].item() == pytest.approx(loss_sum, rel=1e-5)
    assert totals[2:].tolist() == [hits1, hits5] and 0 < hits1 < hits5


def test_an_abandoned_pass_gives_nothing():
    data = load_mlm_data(str(WIKITEXT_DIR), max_train_blocks=2, max_eval_blocks=4)
    inputs, labels = fixed_validation_masks(data.valid_blocks, MaskingSpec.from_tokenizer(data.tokenizer))
    model = load_model(REPO / "checkpoints" / "scratch-wikitext2").eval()
    seen = []
    result = validation_totals(MaskedLMObjective(model, 128 * 2), inputs, labels, batch_size=2, autocast=None,
                               abandon=lambda index: seen.append(index) or index == 1)
    assert result is None and seen == [0, 1]


def test_bf16_logits_rank_as_their_fp32_copy():
    """The trainer ranks the logits as the product gives them (bf16 on a GPU), before its fp32 copy for the loss."""
    torch.manual_seed(1)
    logits = (torch.randn(64, 3000) * 4).bfloat16()  # many ties at bf16's 8 bits of mantissa
    targets = logits.float().topk(3, dim=1).indices[:, 2]
    assert torch.equal(target_ranks(logits, targets), target_ranks(logits.float(), targets))
    assert torch.equal(batch_totals(logits, targets), batch_totals(logits.float(), targets))
