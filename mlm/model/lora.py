"""LoRA: a fine-tune that trains adapters on a frozen pretrained encoder, and the MLM head's own parameters.

Saved as a PEFT adapter plus the head (MLM_HEAD_FILE) on top of a base model that is named (BASE_MODEL_FILE), not
copied: a few MB instead of a full model (mlm/model/files.py writes and loads it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from mlm.errors import UserError

LORA_TARGETS = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
MLM_HEAD_FILE = "mlm_head.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_MODEL_FILE = "base_model.json"  # names the base of a LoRA checkpoint: a package name, hub name or path


def head_parameters(model) -> dict[str, nn.Parameter]:
    """The MLM head's own parameters: its transform and output bias (the decoder weight is the embedding)."""
    head = model.cls.predictions
    named = {f"cls.predictions.transform.{n}": p for n, p in head.transform.named_parameters()}
    return {**named, "cls.predictions.bias": head.bias}


def add_lora(model, rank: int, alpha: float | None = None, dropout: float = 0.1):
    """Freeze the encoder, add LoRA adapters to every linear layer of it, train the MLM head's own parameters."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=dropout, target_modules=LORA_TARGETS)
    peft_model = get_peft_model(model, config)
    for parameter in head_parameters(peft_model.base_model.model).values():
        parameter.requires_grad_(True)
    return peft_model


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def load_head(model, folder: Path) -> None:
    """Copy a LoRA checkpoint's MLM head parameters into a BertForMaskedLM."""
    head = load_file(folder / MLM_HEAD_FILE)
    own = head_parameters(model)
    if set(own) - set(head):
        raise UserError(f"{folder / MLM_HEAD_FILE} lacks {sorted(set(own) - set(head))[0]}")
    with torch.no_grad():
        for name, parameter in own.items():
            parameter.copy_(head[name])


def load_lora_weights(peft_model, folder: Path) -> None:
    """Adapter and head of a LoRA checkpoint into a model from `add_lora` (to resume training it)."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(peft_model, load_file(folder / ADAPTER_WEIGHTS))
    load_head(peft_model.base_model.model, folder)
