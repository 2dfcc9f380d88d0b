"""The `kernels` switch (TrainConfig.kernels, `--kernels`): where each hand-written backward of mlm/fast runs.

A layer or loss built with a `kernels` value asks `hand_written` at every call; the value is chosen where the model
and the objective are built, never by replacing a function. The pieces (mlm.config.KERNEL_PIECES):
  linear       mlm/fast/layers.py Linear and `linear` (every linear layer; the output layer under torch's loss)
  layer_norm   mlm/fast/layers.py LayerNorm
  output_loss  mlm/fast/output_loss.py OutputLayerLoss (the output layer and its cross-entropy, one backward)
"auto" runs them where a GPU computes gradients, LayerNorm's only above FEW_ROWS rows; on a CPU none of this is
the slow part, and there torch's own layers run. "torch" runs none, "custom" all of them wherever gradients are
computed and at any size (what the reference tests compare with torch), a list exactly the pieces it names.
"""

from __future__ import annotations

import torch

from mlm.config import kernel_pieces

# A LayerNorm backward of at most this many rows (the original recipe's 8 x 128 tokens) is latency-bound: torch's
# two kernels beat the hand-written one's five there (benchmarks/LOG.md row 35).
FEW_ROWS = 4096


def check_kernels(kernels: str) -> str:
    """`kernels` itself, if it is a value the switch knows (a UserError says which are)."""
    kernel_pieces(kernels)
    return kernels


def hand_written(kernels: str, piece: str, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `piece`'s hand-written backward runs for this call with input `x` and parameter `weight`."""
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return False  # no gradient to compute: the forward is torch's either way
    pieces = kernel_pieces(kernels)
    if pieces is not None:
        return piece in pieces
    rows = x.numel() // x.shape[-1]
    return x.is_cuda and (piece != "layer_norm" or rows > FEW_ROWS)
