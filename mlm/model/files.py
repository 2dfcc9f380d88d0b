"""Model checkpoints: `save_pretrained` folders in safetensors, loaded from safetensors only, checked on load.

Everything saved here is a plain `save_pretrained` folder, so `pipeline("fill-mask", model=DIR)` works on it; a LoRA
fine-tune is its adapter, its MLM head and the name of its base (mlm/model/lora.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from mlm.errors import UserError
from mlm.model.build import bert_for_masked_lm, pretrained_model
from mlm.model.lora import (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_MODEL_FILE, MLM_HEAD_FILE, head_parameters, is_lora, load_head,
)
from mlm.runs.manifest import verify_checkpoint

# Files that make a folder a loadable checkpoint: a full one, or a LoRA adapter (its base is named, not copied).
CHECKPOINT_FILES = (("config.json", "model.safetensors"), (ADAPTER_CONFIG, ADAPTER_WEIGHTS))


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
