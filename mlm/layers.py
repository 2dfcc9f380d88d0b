"""Linear and LayerNorm layers whose backward suits a GPU step of many short rows: torch's results, sooner.

In the `fast` step (16,384 rows of 256 - 1,024 features, bf16 under autocast) torch's backward spends much of its
time outside the matrix products: it sums each bias gradient over the rows with a reduction kernel (21 - 27 us on
an H200) where a matrix product with a row of ones takes 6 - 9 us; autocast's bf16 weight, bias and input
gradients each go through one more kernel that copies them to fp32, which a CUDA matrix product writes directly
(`out_dtype`); and LayerNorm's weight and bias gradients come from a kernel that takes 68 us for 256 columns. The
forwards are torch's own, with autocast's casts (linear: to the autocast dtype; layer norm: to fp32).
Measured effect: benchmarks/README.md, speedrun log.

The plain-torch model (mlm/bert.py) uses these where it trains on a GPU; with no gradient to compute, or on a CPU
(where none of this is the slow part), they are exactly nn.Linear and nn.LayerNorm. tests/test_layers.py checks
outputs and gradients against torch's layers, with and without autocast (the custom backward forced on the CPU);
benchmarks/check_layers_gpu.py does it on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def matmul_to(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a @ b (2-d) returned in `dtype`: on CUDA a bf16/fp16 product is written as fp32 by the kernel itself."""
    if a.dtype == dtype:
        return a @ b
    if a.is_cuda and dtype == torch.float32:
        return torch.mm(a, b, out_dtype=dtype)
    return (a @ b).to(dtype)


_ONES: dict[tuple, torch.Tensor] = {}  # one row of ones per (length, dtype, device), kept (CUDA graphs replay it)


def column_sums(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """rows.sum(0) in `dtype`. For narrow rows as a product with a row of ones (a reduction kernel over 16,384 x
    256 takes 21 us on an H200, the product 6); wide rows (the 30,528-word output layer) reduce faster as a sum."""
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
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = matmul_to(rows, cast_weight, x_dtype).view(*grad.shape[:-1], cast_weight.shape[1])
        if ctx.needs_input_grad[1]:
            grad_weight = matmul_to(rows.t(), cast_x.reshape(-1, cast_x.shape[-1]), weight_dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = column_sums(rows, bias_dtype)
        return grad_x, grad_weight, grad_bias, None


def custom_backward_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A gradient to compute, on a GPU (tests on the CPU replace this to run LinearFunction there)."""
    return x.is_cuda and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with LinearFunction's backward where there is one to run on a GPU."""
    if not custom_backward_applies(x, weight):
        return F.linear(x, weight, bias)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    return LinearFunction.apply(x, weight, bias, dtype)


class Linear(nn.Linear):
    """nn.Linear (same parameters, initialisation and state dict) whose training forward is `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


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
    """nn.LayerNorm (same parameters and state dict) whose training forward has LayerNormFunction's backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not custom_backward_applies(x, self.weight):
            return super().forward(x)
        device = x.device.type
        dtype = torch.float32 if torch.is_autocast_enabled(device) else x.dtype  # autocast runs layer norm in fp32
        return LayerNormFunction.apply(x, self.weight, self.bias, self.eps, dtype)
