"""The training loss: a BertForMaskedLM's masked-LM loss with the output layer computed only where it counts.

Works on transformers' model (fine-tuning) and on the plain-torch one (mlm/bert.py) alike: both name their head
`cls.predictions` with a `transform` and a `decoder` tied to the word embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlm.data import IGNORE_INDEX
from mlm.layers import linear


class MaskedLMObjective(nn.Module):
    """Loss of a BertForMaskedLM, computing the 30,522-way output layer only at masked positions.

    In this small model the output layer is three quarters of all arithmetic, and only ~15% of positions carry a
    label. Gathering a fixed number (`max_predictions`) of positions, masked ones first, keeps every shape static,
    so the step can be compiled or captured as a CUDA graph; padding positions carry IGNORE_INDEX and drop out of
    the mean. The result equals `BertForMaskedLM(...).loss` on the same batch.

    The loss computes the output layer over a vocabulary padded to a multiple of VOCAB_MULTIPLE words (30,528):
    rows of 30,522 bf16 values are not 16-byte aligned, which sends the three output-layer matrix products to older,
    slower kernels (on an H200 the forward product 485 -> 162 us, the `fast` step 5.8 -> 5.0 ms). The padding words
    have weight 0 and bias PAD_LOGIT, so their probability is exactly 0 and the loss and gradients are those over
    the real vocabulary.
    """

    VOCAB_MULTIPLE = 64
    PAD_LOGIT = -30000.0  # exp(PAD_LOGIT - any real logit) is 0 in fp32, and the logits stay finite (in fp16 too)

    def __init__(self, model, max_predictions: int):
        super().__init__()
        self.model = model
        self.max_predictions = max_predictions

    def padded_predictions(self, input_ids: torch.Tensor, labels: torch.Tensor):
        """(logits over the padded vocabulary, targets) at up to `max_predictions` positions; targets are
        IGNORE_INDEX at padding positions."""
        hidden = self.model.bert(input_ids=input_ids).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])
        targets = labels.reshape(-1)
        # Stable sort of "is not masked" puts the masked positions first, in order, with a static output size.
        order = torch.argsort((targets == IGNORE_INDEX).to(torch.uint8), stable=True)[: self.max_predictions]
        head = self.model.cls.predictions
        decoder = head.decoder  # weight: the word embeddings (tied); bias: the head's `bias`
        extra = -decoder.weight.shape[0] % self.VOCAB_MULTIPLE
        weight = F.pad(decoder.weight, (0, 0, 0, extra))
        bias = F.pad(decoder.bias, (0, extra), value=self.PAD_LOGIT)
        return linear(head.transform(hidden[order]), weight, bias), targets[order]

    def predictions(self, input_ids: torch.Tensor, labels: torch.Tensor):
        """(logits, targets) at up to `max_predictions` positions, the logits over the real vocabulary."""
        logits, targets = self.padded_predictions(input_ids, labels)
        return logits[:, : self.model.cls.predictions.decoder.weight.shape[0]], targets

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, targets = self.padded_predictions(input_ids, labels)
        if logits.dtype == torch.float32:
            return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        # bf16 (under autocast): the ~5k x 30,528 softmax is the step's largest memory traffic, and an fp32 copy of
        # the logits (which autocast would make) doubles it; the kernels accumulate in fp32 either way. On an H200
        # this took a `fast` step from 8.6 to 7.4 ms.
        with torch.autocast(logits.device.type, enabled=False):
            return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX).float()
