"""The output layer of the masked-LM loss: its vocabulary padded for aligned rows, and, where the `kernels` switch
runs it ("output_loss", mlm/fast/kernels.py), the output layer and its cross-entropy as one autograd function.

mlm/train/objective.py (MaskedLMObjective) uses both: the padding on every path, OutputLayerLoss where it is on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlm.data.masking import IGNORE_INDEX
from mlm.fast.layers import matmul_to

# Rows of 30,522 bf16 values are not 16-byte aligned, which sends the output layer's three matrix products to older,
# slower kernels; padded to a multiple of 64 words (30,528) they run on the current ones (benchmarks/LOG.md row 23).
VOCAB_MULTIPLE = 64
PAD_LOGIT = -30000.0  # exp(PAD_LOGIT - any real logit) is 0 in fp32, and the logits stay finite (in fp16 too)


def padded_output_layer(weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype):
    """The output layer's weight and bias over the vocabulary padded to a multiple of VOCAB_MULTIPLE words, cast to
    `dtype` straight into place: one copy each, no padded fp32 copy first. The padding words have weight 0 and bias
    PAD_LOGIT, so their probability is exactly 0 and the loss and gradients are those over the real vocabulary
    (tests/unit/test_model.py and tests/unit/test_bert.py compare the loss with BertForMaskedLM's own). Autograd follows the
    copies where gradients are on."""
    vocab, width = weight.shape
    padded_vocab = vocab + -vocab % VOCAB_MULTIPLE
    padded_weight = torch.empty(padded_vocab, width, dtype=dtype, device=weight.device)
    padded_weight[:vocab], padded_weight[vocab:] = weight, 0
    padded_bias = torch.full((padded_vocab,), PAD_LOGIT, dtype=dtype, device=bias.device)
    padded_bias[:vocab] = bias
    return padded_weight, padded_bias


class OutputLayerLoss(torch.autograd.Function):
    """Mean cross-entropy of the output layer `x @ weight.T + bias` against `targets` (IGNORE_INDEX: not counted).

    The logits are the step's largest tensor (~5k positions x 30,528 words in `fast`). torch's cross-entropy saves
    log-probabilities, and its backward writes a dense gradient of zeros with -1/n at the targets and then reads it
    with the log-probabilities to form the logits' gradient: three more passes over that tensor after the softmax.
    Here the forward keeps the softmax itself; the backward turns it into the logits' unscaled gradient in place
    (minus one at each target) and applies 1/n, and zero for ignored rows, to the small matrices on either side of
    the output layer's products instead: no pass over the logits after the softmax. The speedrun log
    (benchmarks/LOG.md) has the measurements: row 31 (this function), row 32 (weight and bias gradients from one
    product).

    The loss is -log of the target's probability (softmax in `dtype`, accumulated in fp32 by torch's kernel);
    with bf16 that rounds each term by at most ~0.002, less than bf16 log-probabilities do. A probability below
    fp32's smallest normal number counts as that number (a term of at most 87.3). tests/unit/test_speedrun.py checks loss
    and gradients against torch's cross-entropy; benchmarks/check_layers_gpu.py the whole model's on a GPU.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        cast_x = x.to(dtype)
        cast_weight, cast_bias = padded_output_layer(weight, bias, dtype)
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
        # Weight and bias gradients from one product, the scaled inputs with the scale itself as one more column,
        # so the logits' gradient is read once (a bias gradient of its own costs one more product over it, row 32).
        # The weight part is not contiguous, so autograd copies it (31 MB).
        scaled = torch.zeros(rows, width + 8, dtype=cast_x.dtype, device=cast_x.device)  # 8: aligned rows
        torch.mul(cast_x, scale, out=scaled[:, :width])
        scaled[:, width] = scale[:, 0]
        both = matmul_to(logits_grad[:, :vocab].t(), scaled, weight_dtype)
        grad_weight, grad_bias = both[:, :width], both[:, width].to(bias_dtype)
        grad_x = (matmul_to(logits_grad, cast_weight, torch.float32) * scale).to(x_dtype)
        return grad_x, grad_weight, grad_bias, None, None
