"""Linear, LayerNorm and attention layers whose GPU path suits this small model's steps: torch's results, sooner.

In the `fast` step (16,384 rows of 256 - 1,024 features, bf16 under autocast) torch's backward spends much of its
time outside the matrix products: it sums each bias gradient over the rows with a reduction kernel (21 - 27 us on
an H200) where a matrix product with a row of ones takes 6 - 9 us; autocast's bf16 weight, bias and input
gradients each go through one more kernel that copies them to fp32, which a CUDA matrix product writes directly
(`out_dtype`); and LayerNorm's weight and bias gradients come from a kernel that takes 68 us for 256 columns. The
forwards are torch's own, with autocast's casts (linear: to the autocast dtype; layer norm: to fp32).
The original recipe's step (batch 8: 1,024 rows) is the opposite case, ~300 kernels that each fill a few of the
GPU's SMs: there the parameter gradients run on a second CUDA stream beside the input gradients (`concurrently`),
layer norm is torch's own, and attention is FlashAttention's. Measured effects: benchmarks/README.md, speedrun log.

The plain-torch model (mlm/model/bert.py) uses these where it trains on a GPU; with no gradient to compute, or on a CPU
(where none of this is the slow part), they are exactly nn.Linear and nn.LayerNorm. tests/test_layers.py checks
outputs and gradients against torch's layers, with and without autocast (the custom backward forced on the CPU);
benchmarks/check_layers_gpu.py does it on a GPU.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


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


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}  # one per device, made before any capture (warm-up steps)
FEW_ROWS = 4096  # a backward of at most this many rows is latency-bound: its kernels fill a few SMs each


def concurrently(side: Callable, main: Callable, device: torch.device, rows: int):
    """(side(), main()): on a GPU, for a backward of few rows, `side` on a second stream while `main` runs on the
    current one, joined after.

    A backward's parameter gradients are off the critical path: nothing needs them until the optimizer. At the
    original recipe's batch of 8 x 128 tokens each kernel fills a few of the GPU's 132 SMs, so the parameter
    gradients' products and sums run beside the input gradient's product instead of after it (in a captured CUDA
    graph: parallel branches): on an H200 that step 1.116 -> 1.083 ms. With `fast`'s 16,384 rows the kernels are
    large and a second stream cost 0.7%, so there they stay on one. `side` returns a tuple of tensors (or None);
    they are recorded as used on the current stream, so the caching allocator does not hand their memory back to
    the side stream too early. Under `torch.compile` (`--compile`) both run on the one stream: the compiler orders
    the kernels itself.
    """
    if device.type != "cuda" or rows > FEW_ROWS or torch.compiler.is_compiling():
        return side(), main()
    current = torch.cuda.current_stream(device)
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    other = _SIDE_STREAMS[device]
    other.wait_stream(current)
    with torch.cuda.stream(other):
        side_results = side()
    main_results = main()
    current.wait_stream(other)
    for tensor in side_results:
        if tensor is not None:
            tensor.record_stream(current)
    return side_results, main_results


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

        def parameters():
            return (matmul_to(rows.t(), cast_x.reshape(-1, cast_x.shape[-1]), weight_dtype) if need_weight else None,
                    column_sums(rows, bias_dtype) if need_bias else None)

        def inputs():
            if need_x:
                return matmul_to(rows, cast_weight, x_dtype).view(*grad.shape[:-1], cast_weight.shape[1])

        (grad_weight, grad_bias), grad_x = concurrently(parameters, inputs, grad.device, rows.shape[0])
        return grad_x, grad_weight, grad_bias, None


def custom_backward_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A gradient to compute, on a GPU (tests on the CPU replace this to run LinearFunction there)."""
    return x.is_cuda and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def product_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a matrix product with `weight` runs in here: autocast's where it is on, else the weight's."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with LinearFunction's backward where there is one to run on a GPU."""
    if not custom_backward_applies(x, weight):
        return F.linear(x, weight, bias)
    return LinearFunction.apply(x, weight, bias, product_dtype(weight))


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
    """nn.LayerNorm (same parameters and state dict) whose training forward has LayerNormFunction's backward where
    it pays: for many rows. For FEW_ROWS or fewer, torch's backward (two kernels) beats the five of the column sums:
    at the original recipe's 1,024 rows a step on an H200, 1.16 -> 1.10 ms."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not custom_backward_applies(x, self.weight) or x.numel() // x.shape[-1] <= FEW_ROWS:
            return super().forward(x)
        device = x.device.type
        dtype = torch.float32 if torch.is_autocast_enabled(device) else x.dtype  # autocast runs layer norm in fp32
        return LayerNormFunction.apply(x, self.weight, self.bias, self.eps, dtype)


# FlashAttention first, then torch's usual order (cuDNN's first on an H100/H200); fp32 falls through to the others
FLASH_FIRST = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
               SDPBackend.MATH]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """F.scaled_dot_product_attention over (batch, heads, length, head size); on a GPU, for FEW_ROWS tokens or
    fewer, with FlashAttention rather than cuDNN's kernels: at the original recipe's 1,024 tokens a step on an H200
    1.098 -> 1.083 ms (1.094 -> 1.058 in another run), where at `fast`'s 16,384 cuDNN's are 0.7% faster."""
    if not q.is_cuda or q.shape[0] * q.shape[2] > FEW_ROWS:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    with sdpa_kernel(FLASH_FIRST, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
