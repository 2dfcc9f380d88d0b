"""mlm.fast.layers against torch's nn.Linear and nn.LayerNorm: the same outputs and gradients (fp32 and bf16 autocast),
parameters and initialisation.

With kernels="auto" the custom backward runs on GPUs only; here the layers are built with kernels="custom", which
runs it on the CPU too (`torch.mm`'s fp32 output for bf16 inputs, the one CUDA-only line, is checked on the GPU by
benchmarks/check_layers_gpu.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlm.errors import UserError
from mlm.fast.kernels import hand_written
from mlm.fast.layers import LayerNorm, Linear, column_sums, linear, matmul_to


def pair(bias: bool = True, kernels: str = "custom"):
    torch.manual_seed(3)
    reference = nn.Linear(24, 40, bias=bias)
    torch.manual_seed(3)
    ours = Linear(24, 40, bias=bias, kernels=kernels)
    return ours, reference


def test_same_parameters_initialisation_and_state_dict():
    ours, reference = pair()
    assert ours.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), reference.state_dict().values()))
    assert isinstance(ours, nn.Linear)


def gradients(module, x, autocast: bool):
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = module(x)
    (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = [x.grad] + [p.grad for p in module.parameters()]
    return out, grads


@pytest.mark.parametrize("bias", [True, False])
def test_fp32_outputs_and_gradients_equal_nn_linear(bias):
    ours, reference = pair(bias)
    x = torch.randn(3, 17, 24)
    out, grads = gradients(ours, x, autocast=False)
    expected_out, expected = gradients(reference, x, autocast=False)
    assert out.grad_fn.name().startswith("LinearFunction")  # the custom backward did run
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    for got, want in zip(grads, expected):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_outputs_and_gradients_match_nn_linear_in_dtype_and_value():
    """Under autocast: bf16 output; fp32 gradients for the fp32 input and parameters, as autocast's casts give."""
    ours, reference = pair()
    x = torch.randn(5, 33, 24)
    out, grads = gradients(ours, x, autocast=True)
    expected_out, expected = gradients(reference, x, autocast=True)
    assert out.dtype == expected_out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    for got, want in zip(grads, expected):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)  # bf16 sums, accumulated in other orders


@pytest.mark.parametrize("kernels", ["auto", "torch", "layer_norm,output_loss"])
def test_off_the_gpu_or_without_gradients_it_is_exactly_nn_linear(kernels):
    ours, _ = pair(kernels=kernels)
    x = torch.randn(2, 24, requires_grad=True)
    assert ours(x).grad_fn.name() == "AddmmBackward0"  # CPU: torch's own path
    with torch.no_grad():
        assert ours(x).grad_fn is None


def test_matmul_to_returns_the_product_in_the_asked_dtype():
    a, b = torch.randn(4, 6, dtype=torch.bfloat16), torch.randn(6, 5, dtype=torch.bfloat16)
    result = matmul_to(a, b, torch.float32)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, (a.float() @ b.float()), rtol=1e-2, atol=1e-2)
    assert matmul_to(a.float(), b.float(), torch.float32).dtype == torch.float32


def test_functional_form_takes_a_padded_weight_and_its_gradient_reaches_the_original():
    """The MLM loss pads the tied output weight; the gradient flows back through the padding to the embedding."""
    weight = torch.randn(10, 8, requires_grad=True)
    x = torch.randn(6, 8, requires_grad=True)
    padded = torch.nn.functional.pad(weight, (0, 0, 0, 6))
    out = linear(x, padded, kernels="custom")
    assert out.shape == (6, 16) and out.grad_fn.name().startswith("LinearFunction")
    out.sum().backward()
    torch.testing.assert_close(weight.grad, x.detach().sum(0).expand(10, 8))  # d(sum x W^T)/dW: every row x.sum(0)


@pytest.mark.parametrize("width", [256, 5000])
def test_column_sums_equal_torch_sum_for_narrow_and_wide_rows(width):
    rows = torch.randn(300, width)
    torch.testing.assert_close(column_sums(rows, torch.float32), rows.sum(0), rtol=1e-5, atol=1e-4)
    halves = rows.bfloat16()
    assert column_sums(halves, torch.float32).dtype == torch.float32
    torch.testing.assert_close(column_sums(halves, torch.float32), halves.float().sum(0), rtol=2e-2, atol=0.5)


def norm_pair(kernels: str = "custom"):
    reference = nn.LayerNorm(48, eps=1e-12)
    ours = LayerNorm(48, eps=1e-12, kernels=kernels)
    with torch.no_grad():  # trained-looking affine parameters, the same in both
        for a, b in zip(ours.parameters(), reference.parameters()):
            a.copy_(torch.randn_like(a))
            b.copy_(a)
    return ours, reference


@pytest.mark.parametrize("autocast, input_dtype", [(False, torch.float32), (True, torch.float32), (True, torch.bfloat16)])
def test_layer_norm_outputs_and_gradients_equal_nn_layer_norm(autocast, input_dtype):
    """fp32; under autocast with an fp32 input (the residual stream) and a bf16 one (the head's GELU output)."""
    ours, reference = norm_pair()
    x = (torch.randn(4, 19, 48) * 3 + 1).to(input_dtype)
    out, grads = gradients(ours, x, autocast=autocast)
    if input_dtype == torch.bfloat16:  # CUDA's autocast runs layer norm in fp32 (the CPU's would keep bf16)
        class InFloat32(nn.Module):
            def __init__(self):
                super().__init__()
                self.norm = reference

            def forward(self, inputs):
                return self.norm(inputs.float())

        expected_out, expected = gradients(InFloat32(), x, autocast=False)
    else:
        expected_out, expected = gradients(reference, x, autocast=autocast)
    assert out.grad_fn.name().startswith("LayerNormFunction")
    assert out.dtype == expected_out.dtype
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    for got, want in zip(grads, expected):
        assert got.dtype == want.dtype
        tolerance = 1e-2 if input_dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("kernels", ["auto", "torch", "linear,output_loss"])
def test_layer_norm_off_the_gpu_is_torchs(kernels):
    ours, _ = norm_pair(kernels)
    assert ours(torch.randn(2, 48, requires_grad=True)).grad_fn.name() == "NativeLayerNormBackward0"


def test_the_kernels_switch_runs_the_pieces_it_names_and_auto_only_on_a_gpu():
    x, weight = torch.randn(3, 8, requires_grad=True), torch.randn(8, 8)
    pieces = ("linear", "layer_norm", "output_loss")
    assert all(hand_written("custom", piece, x, weight) for piece in pieces)
    assert not any(hand_written(kernels, piece, x, weight) for kernels in ("torch", "auto") for piece in pieces)
    assert [hand_written("linear,output_loss", piece, x, weight) for piece in pieces] == [True, False, True]
    with torch.no_grad():  # nothing to differentiate: torch's forward, whatever the switch says
        assert not hand_written("custom", "linear", x, weight)
    assert not hand_written("custom", "linear", x.detach(), weight)
    for bad in ("cuda", "linear,,layer_norm", "", "Linear"):
        with pytest.raises(UserError, match="--kernels must be auto, torch, custom or a comma-separated list"):
            Linear(4, 4, kernels=bad)
