"""Which precision a run computes in: imported by the app's estimate (mlm/ui/jobs/estimate.py) as well as by the
trainer, so it imports nothing but torch."""

from __future__ import annotations

import torch


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware does it natively (recent GPUs; CPUs with AMX), else fp32 (None: no autocast).

    Even the original recipe's batch of 8 x 128 tokens gains on a GPU, because the plain model's backward writes
    fp32 gradients directly (mlm/fast/layers.py); the rule it replaced (fp32 below 4,096 tokens a step) had been
    measured on transformers' model. The speedrun log, benchmarks/LOG.md row 30, has the measurements."""
    if mixed_precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return torch.bfloat16 if device.type == "cpu" and amx else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
