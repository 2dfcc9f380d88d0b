"""The model: Hugging Face's BertForMaskedLM, built small from scratch or loaded pretrained (mlm/train/objective.py: its loss).

A from-scratch training run builds the same network in plain torch instead (`scratch_bert`, mlm/model/bert.py: same
parameter names, same random start, same saved files), so that its process never imports transformers.

Everything saved here is a plain `save_pretrained` folder in safetensors, so `pipeline("fill-mask", model=DIR)`
works on it. A LoRA fine-tune is saved as a PEFT adapter plus the MLM head's own parameters (`mlm_head.safetensors`)
on top of a base model that is named, not copied: a few MB instead of a full model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mlm.config import INITS
from mlm.hub import resolve
from mlm.errors import UserError
from mlm.runs.manifest import verify_checkpoint

# The mission's model: 3 layers, hidden 256, 4 heads, FFN 1024, 512 positions, dropout 0.1 -> 10,411,834 parameters.
SCRATCH_ARCHITECTURE = dict(
    num_hidden_layers=3, hidden_size=256, num_attention_heads=4, intermediate_size=1024,
    max_position_embeddings=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
)
LORA_TARGETS = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
MLM_HEAD_FILE = "mlm_head.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Files that make a folder a loadable checkpoint: a full one, or a LoRA adapter (its base is named, not copied).
CHECKPOINT_FILES = (("config.json", "model.safetensors"), (ADAPTER_CONFIG, ADAPTER_WEIGHTS))
BASE_MODEL_FILE = "base_model.json"  # names the base of a LoRA checkpoint: a package name, hub name or path


def scratch_config(tokenizer, dropout: float = 0.1) -> dict:
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                **{**SCRATCH_ARCHITECTURE, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout})


def scratch_model(tokenizer, dropout: float = 0.1, init: str = "bert"):
    """transformers' BertForMaskedLM, fresh: for callers that need the HF class (its Trainer, the app)."""
    from transformers import BertConfig, BertForMaskedLM

    return initialised(BertForMaskedLM(BertConfig(**scratch_config(tokenizer, dropout))), init)


def scratch_bert(tokenizer, dropout: float = 0.1, init: str = "bert"):
    """The same model in plain torch (mlm.model.bert), what a from-scratch run trains: building it imports no
    transformers. Same parameter names, and under the same seed the same random start as `scratch_model`."""
    from mlm.model.bert import BertConfig, BertForMaskedLM

    return initialised(BertForMaskedLM(BertConfig(**scratch_config(tokenizer, dropout))), init)


def resumed_scratch_bert(folder: str | Path, dropout: float | None = None):
    """A from-scratch run's saved weights as the plain-torch model, to resume training it."""
    from mlm.model.bert import BertForMaskedLM

    try:
        return BertForMaskedLM.from_pretrained(folder, dropout)
    except Exception as error:  # noqa: BLE001 - missing, corrupt or foreign: one line for the user either way
        raise UserError(f"cannot load a BERT model from '{folder}': {type(error).__name__}: {error}") from error


def initialised(model, init: str):
    """`model` as built (Hugging Face's init: "bert"), or re-initialised by `mimetic_init`."""
    if init == "mimetic":
        mimetic_init(model)
    elif init != "bert":
        raise UserError(f"unknown init '{init}'; choose one of {', '.join(INITS)}")
    return model


def sinusoids(positions: int, width: int) -> torch.Tensor:
    """The Transformer paper's position table: sin/cos pairs at geometrically spaced frequencies."""
    position = torch.arange(positions, dtype=torch.float64)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(10000.0) / width))
    table = torch.zeros(positions, width, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
    return table


def mimetic_init(model) -> None:
    """Start attention looking at neighbours, so the model leaves the loss plateau in 2-3 epochs instead of 6-10.

    From Hugging Face's init the model spends epochs near loss 6, predicting word frequencies: its attention is
    uniform (query and key weights of std 0.02 give logits near 0) and its learned positions are random vectors,
    so nothing says which words are near each other. Two changes, the architecture untouched:
      * the position embeddings start as the Transformer paper's sinusoids (at HF's std, 0.02), so nearby
        positions start with similar vectors;
      * each layer's key weights start equal to its query weights, both twice HF's scale ("mimetic"
        initialisation, Trockman & Kolter 2023): q.k = x W^T W x' is then large for similar inputs, so from the
        first step a position attends to itself and its neighbours rather than uniformly.
    Measured on one H200 (benchmarks/README.md, speedrun log; benchmarks/init_ablation.py): each change alone
    shortens the plateau; together `fast` reaches loss 3.9 at epoch 7-8 instead of 18, in two seeds out of two."""
    sinusoidal_positions(model, model.config.initializer_range)
    mimetic_attention(model, 2.0)


@torch.no_grad()
def sinusoidal_positions(model, std: float) -> None:
    positions = model.bert.embeddings.position_embeddings.weight
    table = sinusoids(*positions.shape)
    positions.copy_(table / table.std() * std)


@torch.no_grad()
def mimetic_attention(model, scale: float) -> None:
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self
        attention.query.weight.mul_(scale)
        attention.key.weight.copy_(attention.query.weight)


def pretrained_model(name_or_path: str, dropout: float | None = None):
    """Any BERT checkpoint as BertForMaskedLM. An encoder without MLM head (MiniLM) gets a fresh head whose decoder
    is tied to the pretrained input embeddings."""
    from transformers import BertForMaskedLM

    overrides = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    try:
        # dtype pinned: transformers 5 would otherwise keep a checkpoint's own (possibly fp16) dtype for training
        return BertForMaskedLM.from_pretrained(resolve(name_or_path), use_safetensors=True, dtype=torch.float32, **overrides)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - missing, corrupt or foreign: one line for the user either way
        raise UserError(f"cannot load a BERT model from '{name_or_path}': {type(error).__name__}: {error}") from error


def parameter_count(model: nn.Module) -> int:
    """Unique parameters (the tied decoder weight is the embedding matrix, counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ----------------------------------------------------------------------------------------------------------------
# LoRA: a few MB on top of a pretrained encoder


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
    load_head(bert_for_masked_lm(peft_model), folder)


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def bert_for_masked_lm(model):
    """The plain BertForMaskedLM inside a PEFT wrapper (or the model itself)."""
    return model.base_model.model if is_lora(model) else model


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: save_pretrained folders, loaded from safetensors only


def save_model(model, tokenizer, folder: Path, base_model: str | None = None) -> None:
    """Write a model folder (into a folder the caller renames into place). LoRA: adapter + head + base name."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    if is_lora(model):
        model.save_pretrained(folder, safe_serialization=True)
        head = {name: p.detach().float().cpu().contiguous() for name, p in head_parameters(bert_for_masked_lm(model)).items()}
        save_file(head, folder / MLM_HEAD_FILE)
        (folder / BASE_MODEL_FILE).write_text(json.dumps({"base_model": base_model}) + "\n")
    else:
        model.save_pretrained(folder, safe_serialization=True)


def weights_file(folder: Path) -> Path | None:
    """The weights of a loadable checkpoint folder, or None if the folder is not (yet) one."""
    for config, weights in CHECKPOINT_FILES:
        if (folder / config).is_file() and (folder / weights).is_file():
            return folder / weights
    return None


def load_model(folder: str | Path, torch_dtype: torch.dtype = torch.float32):
    """A BertForMaskedLM ready for inference from a full checkpoint or a LoRA one (merged into the base); a
    checkpoint that does not match its manifest, or holds non-finite weights, is refused with a UserError."""
    verify_checkpoint(Path(folder))
    model = _load_model(Path(folder), torch_dtype)
    if not all(bool(p.isfinite().all()) for p in model.parameters()):
        raise UserError(f"the checkpoint '{Path(folder).name}' holds non-finite weights (its run diverged): not used")
    return model


def _load_model(folder: Path, torch_dtype: torch.dtype):
    from peft import PeftModel
    from transformers import AutoModelForMaskedLM

    try:
        if not (folder / ADAPTER_CONFIG).is_file():
            return AutoModelForMaskedLM.from_pretrained(folder, use_safetensors=True, dtype=torch_dtype).eval()
        base = json.loads((folder / BASE_MODEL_FILE).read_text())["base_model"]
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the base's missing MLM head is expected: it comes from this folder next
        try:
            model = pretrained_model(base)
        finally:
            hf_logging.set_verbosity(verbosity)
        load_head(model, folder)
        merged = PeftModel.from_pretrained(model, folder).merge_and_unload()
        return merged.to(torch_dtype).eval()
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - a broken checkpoint of any kind is one line for the user
        raise UserError(f"cannot load the checkpoint in {folder}: {type(error).__name__}: {error}") from error
