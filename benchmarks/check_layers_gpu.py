"""GPU check of mlm/fast's layers and output-layer loss (the backward a CPU run never takes): torch's results.

tests/unit/test_layers.py and tests/unit/test_speedrun.py run the custom backward on the CPU (kernels="custom"); on a GPU it
also writes bf16 products straight to fp32 (`torch.mm(..., out_dtype=torch.float32)`). Here, on the GPU, at the
`fast` step's sizes: one linear layer's and one layer norm's output and gradients against torch's (fp32 and bf16
autocast), then the whole plain model's MLM loss and gradients as training computes them (kernels="auto":
mlm/fast/layers.py, mlm/fast/output_loss.py) against the same model built with kernels="torch" (torch's layers and
cross-entropy): one batch of 128 x 128 tokens (bf16 autocast and fp32) and one of 8 x 128, the original recipe's
(bf16; there "auto" keeps torch's LayerNorm).

    PYTHONPATH=. python benchmarks/check_layers_gpu.py --out benchmarks/check_layers_h200.json
"""

import argparse
import json

import torch
from torch import nn

from mlm.data.masking import MaskingSpec, mask_tokens, max_predictions
from mlm.fast.layers import LayerNorm, Linear
from mlm.model.build import scratch_bert
from mlm.train.objective import MaskedLMObjective
from mlm.data.tokenizer import TokenizerFiles

device = torch.device("cuda")
torch.backends.cuda.matmul.allow_tf32 = True


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))


def layer_check(dtype, kind: str) -> dict:
    torch.manual_seed(0)
    if kind == "linear":
        reference, ours, width = nn.Linear(256, 1024, device=device), Linear(256, 1024, device=device), 1024
    else:
        reference, ours, width = nn.LayerNorm(256, device=device), LayerNorm(256, device=device), 256
        with torch.no_grad():
            for parameter in reference.parameters():
                parameter.copy_(torch.randn_like(parameter))
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(128, 128, 256, device=device)
    upstream = torch.randn(128, 128, width, device=device)
    results = []
    for module in (ours, reference):
        inputs = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = module(inputs)
        (out.float() * upstream).sum().backward()
        results.append((out, [inputs.grad, module.weight.grad, module.bias.grad], out.grad_fn.name()))
    (out, grads, name), (want_out, want_grads, _) = results
    return {"custom backward ran": name.startswith(("LinearFunction", "LayerNormFunction")), "output equal": bool(torch.equal(out, want_out)),
            "gradient dtypes equal": [g.dtype == w.dtype for g, w in zip(grads, want_grads)],
            "relative error of gradients (input, weight, bias)": [relative_error(g, w) for g, w in zip(grads, want_grads)]}


def model_check(autocast: bool, blocks: int = 128) -> dict:
    tokenizer = TokenizerFiles("bert-base-uncased")
    spec = MaskingSpec.from_tokenizer(tokenizer, 0.3)
    torch.manual_seed(0)
    blocks = torch.randint(1000, 30000, (blocks, 128), device=device)
    inputs, labels = mask_tokens(blocks, spec)
    results = []
    for kernels in ("auto", "torch"):
        torch.manual_seed(0)
        model = scratch_bert(tokenizer, 0.0, kernels=kernels).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = MaskedLMObjective(model, max_predictions(inputs.numel(), 0.3), kernels)(inputs, labels)
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in model.named_parameters()}))
    (loss, grads), (want_loss, want_grads) = results
    # A key bias adds the same amount to every score of a query, which the softmax ignores: its exact gradient is
    # zero, and what both backwards compute for it is rounding noise, compared here by size only.
    keys = [name for name in grads if name.endswith("key.bias")]
    errors = {name: relative_error(grads[name], want_grads[name]) for name in grads if name not in keys}
    largest_gradient = max(float(g.float().norm()) for g in want_grads.values())
    return {"loss (custom, torch)": [loss, want_loss], "largest relative gradient error": max(errors.values()),
            "its parameter": max(errors, key=errors.get),
            "key-bias gradient norms (custom, torch; exactly 0 in exact arithmetic)":
                [max(float(grads[k].norm()) for k in keys), max(float(want_grads[k].norm()) for k in keys)],
            "largest gradient norm": largest_gradient}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    out = parser.parse_args().out
    report = {"machine": torch.cuda.get_device_name(), "torch": torch.__version__,
              "linear fp32": layer_check(torch.float32, "linear"),
              "linear bf16 autocast": layer_check(torch.bfloat16, "linear"),
              "layer norm fp32": layer_check(torch.float32, "norm"),
              "layer norm bf16 autocast": layer_check(torch.bfloat16, "norm"),
              "model bf16 autocast": model_check(True), "model fp32": model_check(False),
              "model bf16 autocast, 8 blocks": model_check(True, 8)}
    with open(out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
