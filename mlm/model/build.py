"""The model: Hugging Face's BertForMaskedLM, built small from scratch or loaded pretrained (mlm/train/objective.py: its loss).

A from-scratch training run builds the same network in plain torch instead (`scratch_bert`, mlm/model/bert.py: same
parameter names, same random start, same saved files), so that its process never imports transformers. Its
initialisations are in mlm/model/init.py, LoRA in mlm/model/lora.py, saving and loading in mlm/model/files.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mlm.errors import UserError
from mlm.hub import resolve
from mlm.model.init import initialised
from mlm.model.lora import is_lora

# The mission's model: 3 layers, hidden 256, 4 heads, FFN 1024, 512 positions, dropout 0.1 -> 10,411,834 parameters.
SCRATCH_ARCHITECTURE = dict(
    num_hidden_layers=3, hidden_size=256, num_attention_heads=4, intermediate_size=1024,
    max_position_embeddings=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
)


def scratch_config(tokenizer, dropout: float = 0.1) -> dict:
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                **{**SCRATCH_ARCHITECTURE, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout})


def scratch_model(tokenizer, dropout: float = 0.1, init: str = "bert"):
    """transformers' BertForMaskedLM, fresh: for callers that need the HF class (its Trainer, the app)."""
    from transformers import BertConfig, BertForMaskedLM

    return initialised(BertForMaskedLM(BertConfig(**scratch_config(tokenizer, dropout))), init)


def scratch_bert(tokenizer, dropout: float = 0.1, init: str = "bert", kernels: str = "auto"):
    """The same model in plain torch (mlm.model.bert), what a from-scratch run trains: building it imports no
    transformers. Same parameter names, and under the same seed the same random start as `scratch_model`.
    `kernels`: which backward its layers run (TrainConfig.kernels, mlm/fast/kernels.py)."""
    from mlm.model.bert import BertConfig, BertForMaskedLM

    return initialised(BertForMaskedLM(BertConfig(**scratch_config(tokenizer, dropout)), kernels), init)


def resumed_scratch_bert(folder: str | Path, dropout: float | None = None, kernels: str = "auto"):
    """A from-scratch run's saved weights as the plain-torch model, to resume training it."""
    from mlm.model.bert import BertForMaskedLM

    try:
        return BertForMaskedLM.from_pretrained(folder, dropout, kernels)
    except Exception as error:  # noqa: BLE001 - missing, corrupt or foreign: one line for the user either way
        raise UserError(f"cannot load a BERT model from '{folder}': {type(error).__name__}: {error}") from error


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


def bert_for_masked_lm(model):
    """The plain BertForMaskedLM inside a PEFT wrapper (or the model itself)."""
    return model.base_model.model if is_lora(model) else model


def parameter_count(model: nn.Module) -> int:
    """Unique parameters (the tied decoder weight is the embedding matrix, counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def seeded_start(tokenizer, seed: int, init: str = "bert"):
    """A from-scratch run's random start rebuilt from its seed and init (seed, then build, as the trainer does),
    leaving the caller's random-number generator untouched: the time-lapse's first snapshot stores nothing. The
    plain-torch model: its random start is bit for bit that of transformers' class, which older runs used."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return scratch_bert(tokenizer, init=init).eval()
