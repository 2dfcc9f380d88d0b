"""The training loss: a BertForMaskedLM's masked-LM loss with the output layer computed only where it counts.

Works on transformers' model (fine-tuning) and on the plain-torch one (mlm/model/bert.py) alike: both name their head
`cls.predictions` with a `transform` and a `decoder` tied to the word embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlm.data.masking import IGNORE_INDEX
from mlm.fast.kernels import check_kernels, hand_written
from mlm.fast.layers import linear, product_dtype
from mlm.fast.output_loss import OutputLayerLoss, padded_output_layer


class MaskedLMObjective(nn.Module):
    """Loss of a BertForMaskedLM, computing the 30,522-way output layer only at masked positions.

    In this small model the output layer is three quarters of all arithmetic, and only ~15% of positions carry a
    label. Gathering a fixed number (`max_predictions`) of positions, masked ones first, keeps every shape static,
    so the step can be compiled or captured as a CUDA graph; padding positions carry IGNORE_INDEX and drop out of
    the mean. The result equals `BertForMaskedLM(...).loss` on the same batch (tests/unit/test_model.py, test_bert.py).

    The output layer runs over a padded vocabulary (mlm/fast/output_loss.py, `padded_output_layer`); where the
    `kernels` switch runs the hand-written "output_loss" (mlm/fast/kernels.py), the output layer and its
    cross-entropy are one autograd function, OutputLayerLoss, whose backward makes no pass over the logits after
    the softmax; elsewhere torch's cross-entropy follows the output layer (`torch_loss`).
    """

    def __init__(self, model, max_predictions: int, kernels: str = "auto"):
        super().__init__()
        self.model = model
        self.max_predictions = max_predictions
        self.kernels = check_kernels(kernels)

    def output_layer(self, input_ids: torch.Tensor, labels: torch.Tensor):
        """(hidden states, weight, bias, targets) of the output layer at up to `max_predictions` positions; targets
        are IGNORE_INDEX at padding positions."""
        hidden = self.model.bert(input_ids=input_ids).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])
        targets = labels.reshape(-1)
        # Stable sort of "is not masked" puts the masked positions first, in order, with a static output size.
        order = torch.argsort((targets == IGNORE_INDEX).to(torch.uint8), stable=True)[: self.max_predictions]
        head = self.model.cls.predictions
        decoder = head.decoder  # weight: the word embeddings (tied); bias: the head's `bias`
        return head.transform(hidden[order]), decoder.weight, decoder.bias, targets[order]

    def logits(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The output layer over the padded vocabulary, in the product's dtype."""
        return linear(hidden, *padded_output_layer(weight, bias, product_dtype(weight)), kernels=self.kernels)

    def predictions(self, input_ids: torch.Tensor, labels: torch.Tensor):
        """(logits, targets) at up to `max_predictions` positions, the logits over the real vocabulary."""
        hidden, weight, bias, targets = self.output_layer(input_ids, labels)
        return self.logits(hidden, weight, bias)[:, : weight.shape[0]], targets

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden, weight, bias, targets = self.output_layer(input_ids, labels)
        if hand_written(self.kernels, "output_loss", hidden, weight):
            return OutputLayerLoss.apply(hidden, weight, bias, targets, product_dtype(weight))
        return self.torch_loss(hidden, weight, bias, targets)

    def torch_loss(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor):
        """The output layer, then torch's cross-entropy: the path where OutputLayerLoss does not run."""
        logits = self.logits(hidden, weight, bias)
        if logits.dtype == torch.float32:
            return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        # bf16 (under autocast): the ~5k x 30,528 softmax is the step's largest memory traffic, and an fp32 copy of
        # the logits (which autocast would make) doubles it; the kernels accumulate in fp32 either way
        # (benchmarks/LOG.md row 1).
        with torch.autocast(logits.device.type, enabled=False):
            return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX).float()
