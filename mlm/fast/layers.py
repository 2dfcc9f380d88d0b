"""Linear and LayerNorm layers with a backward of their own for this small model's GPU steps: torch's results, sooner.

In the `fast` step (16,384 rows of 256 - 1,024 features, bf16 under autocast) torch's backward spends much of its
time outside the matrix products: it sums each bias gradient over the rows with a reduction kernel where a matrix
product with a row of ones is about three times quicker; autocast's bf16 weight, bias and input gradients each go
through one more kernel that copies them to fp32, which a CUDA matrix product writes directly (`out_dtype`); and
LayerNorm's weight and bias gradients come from a slow kernel of their own. The forwards are torch's own, with
autocast's casts (linear: to the autocast dtype; layer norm: to fp32). The speedrun log (benchmarks/LOG.md) has
the measurements: row 24 (the linear backward), 25 (the wide output layer's bias gradient as a reduction), 26 (the
LayerNorm backward), 35 (torch's LayerNorm for few rows).

Which backward runs is the `kernels` switch's choice (mlm/fast/kernels.py), given to each layer when it is built:
with "auto", the default, these are exactly nn.Linear and nn.LayerNorm on a CPU or with no gradient to compute.
tests/unit/test_layers.py checks outputs and gradients against torch's layers, with and without autocast (built with
kernels="custom", so the hand-written backward runs on the CPU); benchmarks/check_layers_gpu.py does it on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlm.fast.kernels import check_kernels, hand_written


def matmul_to(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a @ b (2-d) returned in `dtype`: on CUDA a bf16/fp16 product is written as fp32 by the kernel itself."""
    if a.dtype == dtype:
        return a @ b
    if a.is_cuda and dtype == torch.float32:
        return torch.mm(a, b, out_dtype=dtype)
    return (a @ b).to(dtype)


_ONES: dict[tuple, torch.Tensor] = {}  # one row of ones per (length, dtype, device), kept (CUDA graphs replay it)


def column_sums(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """rows.sum(0) in `dtype`. For narrow rows as a product with a row of ones (quicker than a reduction kernel:
    LOG.md row 24); wide rows (the 30,528-word output layer) reduce faster as a sum (row 25)."""
    if rows.shape[1] > 4096:
        return rows.sum(0, dtype=dtype)
    key = (rows.shape[0], rows.dtype, rows.device)
    if key not in _ONES:
        _ONES[key] = torch.ones(1, rows.shape[0], dtype=rows.dtype, device=rows.device)
    return matmul_to(_ONES[key], rows, dtype).view(-1)


class LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        cast_x, cast_weight = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(cast_x, cast_weight)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return F.linear(cast_x, cast_weight, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cast_x, cast_weight = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        rows = grad.reshape(-1, grad.shape[-1])  # (tokens, out)
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_weight = matmul_to(rows.t(), cast_x.reshape(-1, cast_x.shape[-1]), weight_dtype) if need_weight else None
        grad_bias = column_sums(rows, bias_dtype) if need_bias else None
        grad_x = None
        if need_x:
            grad_x = matmul_to(rows, cast_weight, x_dtype).view(*grad.shape[:-1], cast_weight.shape[1])
        return grad_x, grad_weight, grad_bias, None


def product_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a matrix product with `weight` runs in here: autocast's where it is on, else the weight's."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, kernels: str = "auto"):
    """F.linear, with LinearFunction's backward where the `kernels` switch runs the hand-written one."""
    if not hand_written(kernels, "linear", x, weight):
        return F.linear(x, weight, bias)
    return LinearFunction.apply(x, weight, bias, product_dtype(weight))


class Linear(nn.Linear):
    """nn.Linear (same parameters, initialisation and state dict) whose forward is `linear` under its `kernels`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 kernels: str = "auto"):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.kernels = check_kernels(kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.kernels)


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, dtype: torch.dtype):
        cast_x = x.to(dtype)
        out, mean, rstd = torch.native_layer_norm(cast_x, weight.shape, weight, bias, eps)
        ctx.save_for_backward(cast_x, weight, mean, rstd)
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cast_x, weight, mean, rstd = ctx.saved_tensors
        grad = grad.to(cast_x.dtype)
        # the input's gradient from torch's kernel, asked for nothing else; weight and bias gradients as column sums
        grad_x = torch.ops.aten.native_layer_norm_backward(grad, cast_x, weight.shape, mean, rstd, weight, None,
                                                           (True, False, False))[0]
        normalised_times_grad = (cast_x - mean).mul_(rstd).mul_(grad)
        width = weight.shape[0]
        grad_weight = column_sums(normalised_times_grad.reshape(-1, width), weight.dtype)
        grad_bias = column_sums(grad.reshape(-1, width), weight.dtype)
        return grad_x.to(ctx.x_dtype), grad_weight, grad_bias, None, None


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and state dict) whose forward has LayerNormFunction's backward where the
    `kernels` switch runs the hand-written one ("auto": on a GPU, for more than FEW_ROWS rows)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, *, kernels: str = "auto"):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        self.kernels = check_kernels(kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hand_written(self.kernels, "layer_norm", x, self.weight):
            return super().forward(x)
        device = x.device.type
        dtype = torch.float32 if torch.is_autocast_enabled(device) else x.dtype  # autocast runs layer norm in fp32
        return LayerNormFunction.apply(x, self.weight, self.bias, self.eps, dtype)
