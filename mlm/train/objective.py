"""The training loss: a BertForMaskedLM's masked-LM loss with the output layer computed only where it counts.

Works on transformers' model (fine-tuning) and on the plain-torch one (mlm/model/bert.py) alike: both name their head
`cls.predictions` with a `transform` and a `decoder` tied to the word embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlm.data.corpus import IGNORE_INDEX
from mlm.fast import layers
from mlm.fast.layers import concurrently, linear, matmul_to, product_dtype


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

    Where a GPU computes gradients, the output layer and its cross-entropy are one autograd function,
    OutputLayerLoss, whose backward makes no pass over the logits after the softmax.
    """

    VOCAB_MULTIPLE = 64
    PAD_LOGIT = -30000.0  # exp(PAD_LOGIT - any real logit) is 0 in fp32, and the logits stay finite (in fp16 too)

    def __init__(self, model, max_predictions: int):
        super().__init__()
        self.model = model
        self.max_predictions = max_predictions

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

    @classmethod
    def padded(cls, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype):
        """The output layer's weight and bias over the padded vocabulary (padding words: weight 0, bias PAD_LOGIT),
        cast to `dtype` straight into place: one copy each, no padded fp32 copy first. Autograd follows the copies
        where gradients are on."""
        vocab, width = weight.shape
        padded_vocab = vocab + -vocab % cls.VOCAB_MULTIPLE
        padded_weight = torch.empty(padded_vocab, width, dtype=dtype, device=weight.device)
        padded_weight[:vocab], padded_weight[vocab:] = weight, 0
        padded_bias = torch.full((padded_vocab,), cls.PAD_LOGIT, dtype=dtype, device=bias.device)
        padded_bias[:vocab] = bias
        return padded_weight, padded_bias

    def predictions(self, input_ids: torch.Tensor, labels: torch.Tensor):
        """(logits, targets) at up to `max_predictions` positions, the logits over the real vocabulary."""
        hidden, weight, bias, targets = self.output_layer(input_ids, labels)
        return linear(hidden, *self.padded(weight, bias, product_dtype(weight)))[:, : weight.shape[0]], targets

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden, weight, bias, targets = self.output_layer(input_ids, labels)
        if layers.custom_backward_applies(hidden, weight):  # (looked up at call time: tests force it on the CPU)
            return OutputLayerLoss.apply(hidden, weight, bias, targets, product_dtype(weight))
        return self.torch_loss(hidden, weight, bias, targets)

    def torch_loss(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor):
        """The output layer, then torch's cross-entropy: the path without a GPU backward (benchmarks/speedrun.py
        also times it on a GPU against OutputLayerLoss)."""
        logits = linear(hidden, *self.padded(weight, bias, product_dtype(weight)))
        if logits.dtype == torch.float32:
            return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        # bf16 (under autocast): the ~5k x 30,528 softmax is the step's largest memory traffic, and an fp32 copy of
        # the logits (which autocast would make) doubles it; the kernels accumulate in fp32 either way. On an H200
        # this took a `fast` step from 8.6 to 7.4 ms (before OutputLayerLoss took over the GPU's training steps).
        with torch.autocast(logits.device.type, enabled=False):
            return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX).float()


class OutputLayerLoss(torch.autograd.Function):
    """Mean cross-entropy of the output layer `x @ weight.T + bias` against `targets` (IGNORE_INDEX: not counted).

    The logits are the step's largest tensor (~5k positions x 30,528 words in `fast`). torch's cross-entropy saves
    log-probabilities, and its backward writes a dense gradient of zeros with -1/n at the targets and then reads it
    with the log-probabilities to form the logits' gradient: three more passes over that tensor after the softmax.
    Here the forward keeps the softmax itself; the backward turns it into the logits' unscaled gradient in place
    (minus one at each target) and applies 1/n, and zero for ignored rows, to the small matrices on either side of
    the output layer's products instead: no pass over the logits after the softmax (A/B on an H200: the `fast`
    step 4.27 -> 4.01 ms, the original recipe's 1.113 -> 1.083 ms; benchmarks/README.md, speedrun log).

    The loss is -log of the target's probability (softmax in `dtype`, accumulated in fp32 by torch's kernel);
    with bf16 that rounds each term by at most ~0.002, less than bf16 log-probabilities do. A probability below
    fp32's smallest normal number counts as that number (a term of at most 87.3). tests/test_speedrun.py checks loss
    and gradients against torch's cross-entropy.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        cast_x = x.to(dtype)
        cast_weight, cast_bias = MaskedLMObjective.padded(weight, bias, dtype)
        with torch.autocast(x.device.type, enabled=False):  # autocast would make the softmax's output fp32
            probabilities = torch.softmax(F.linear(cast_x, cast_weight, cast_bias), dim=-1)
        counted = targets != IGNORE_INDEX
        safe_targets = torch.where(counted, targets, 0)[:, None]
        target_probabilities = probabilities.gather(1, safe_targets).view(-1).float()
        count = counted.sum().clamp(min=1)
        terms = target_probabilities.clamp(min=torch.finfo(torch.float32).tiny).log()
        ctx.save_for_backward(cast_x, cast_weight, probabilities, safe_targets, counted, count)
        ctx.dtypes, ctx.vocab = (x.dtype, weight.dtype, bias.dtype), weight.shape[0]
        return -torch.where(counted, terms, 0.0).sum() / count

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cast_x, cast_weight, probabilities, safe_targets, counted, count = ctx.saved_tensors
        (x_dtype, weight_dtype, bias_dtype), vocab = ctx.dtypes, ctx.vocab
        # softmax minus one at each counted target: the logits' gradient but for the factor `scale` per row
        logits_grad = probabilities.scatter_add_(1, safe_targets, -counted[:, None].to(probabilities.dtype))
        scale = (counted * (grad / count))[:, None]  # fp32: d(loss)/d(term) per row, 0 where nothing is counted
        rows, width = cast_x.shape

        def parameters():
            # Weight and bias gradients from one product, the scaled inputs with the scale itself as one more
            # column, so the logits' gradient is read once: a bias gradient of its own (one more product over it)
            # took the `fast` step on an H200 4.04 -> 4.15 ms (the same at batch 8), and a one-row product, on a
            # matrix-vector kernel, 155 us more. The weight part is not contiguous, so autograd copies it (31 MB).
            scaled = torch.zeros(rows, width + 8, dtype=cast_x.dtype, device=cast_x.device)  # 8: aligned rows
            torch.mul(cast_x, scale, out=scaled[:, :width])
            scaled[:, width] = scale[:, 0]
            both = matmul_to(logits_grad[:, :vocab].t(), scaled, weight_dtype)
            return both[:, :width], both[:, width].to(bias_dtype)

        def inputs():
            return (matmul_to(logits_grad, cast_weight, torch.float32) * scale).to(x_dtype)

        (grad_weight, grad_bias), grad_x = concurrently(parameters, inputs, cast_x.device, rows)
        return grad_x, grad_weight, grad_bias, None, None
