"""Which models the app offers, and their fill-mask predictions as plain JSON (no Gradio here).

The registry offers, by display name:
  * the models listed in `checkpoints/models.json` (shipped checkpoints; hub models only while the hub is reachable),
    each only if its folder is really there;
  * every other run folder under `checkpoints/` that holds a finished checkpoint, named after its folder, so a run
    trained from the app appears without a restart.

Each model is loaded once and kept; it is loaded again only if its weights file changed (a resumed run).
Predictions run the encoder once and the 30,522-way output layer only at the [MASK] positions, which gives the same
scores as `transformers.pipeline("fill-mask")` for a fraction of the work.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from mlm.checkpoint import CONFIG_FILE, METRICS_FILE, read_metrics
from mlm.hub import UserError, hub_reachable
from mlm.model import load_model, weights_file

MODELS_FILE = "models.json"
MAX_MASKS = 10
MAX_TOP_K = 20
# What students type for a mask, in any case: BERT's [MASK] and RoBERTa's <mask>.
MASK_SPELLINGS = re.compile(r"\[mask\]|<mask>", re.IGNORECASE)
MASK = "[MASK]"
PARAMETERS_IN_CARD = re.compile(r"\(([\d,]+) parameters")


def normalise_masks(text: str) -> str:
    return MASK_SPELLINGS.sub(MASK, text)


def check_text(text: str, top_k) -> str:
    """The text with its masks normalised, or UserError with a short message for the student."""
    if not isinstance(text, str) or not text.strip():
        raise UserError("Type a sentence first, with [MASK] where a word is missing.")
    text = normalise_masks(text.strip())
    masks = text.count(MASK)
    if masks == 0:
        raise UserError("Your sentence has no [MASK]: put [MASK] where the model should guess a word.")
    if masks > MAX_MASKS:
        raise UserError(f"Use at most {MAX_MASKS} [MASK]s at a time (this text has {masks}).")
    if not isinstance(top_k, (int, float)) or top_k != int(top_k) or not 1 <= top_k <= MAX_TOP_K:
        raise UserError(f"Top-k must be a whole number from 1 to {MAX_TOP_K}.")
    return text


@dataclass(frozen=True)
class ModelEntry:
    name: str
    location: str  # a checkpoint folder, or a hub name
    description: str = ""
    on_hub: bool = False

    @property
    def folder(self) -> Path | None:
        return None if self.on_hub else Path(self.location)

    def version(self):
        """Changes when the checkpoint is rewritten, so a cached model is reloaded."""
        weights = weights_file(self.folder) if self.folder else None
        return weights.stat().st_mtime_ns if weights else None


class ModelRegistry:
    def __init__(self, checkpoints_dir: str | Path):
        self.checkpoints_dir = Path(checkpoints_dir)
        self.project_dir = self.checkpoints_dir.resolve().parent  # models.json paths are relative to the project
        self._loaded: dict[str, tuple] = {}  # name -> (version, model, tokenizer)
        self._load_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------------------
    # Which models exist

    def configured(self) -> list[ModelEntry]:
        """models.json entries that can be offered now (the folder exists, or the hub is reachable)."""
        path = self.checkpoints_dir / MODELS_FILE
        try:
            listed = json.loads(path.read_text())["models"] if path.is_file() else []
        except (OSError, ValueError, KeyError, TypeError):
            listed = []  # a broken registry file must not take the demo down; discovery still offers run folders
        entries = []
        for item in listed:
            if not isinstance(item, dict) or "name" not in item:
                continue
            description = item.get("description", "")
            if item.get("hub"):
                if hub_reachable():
                    entries.append(ModelEntry(item["name"], item["hub"], description, on_hub=True))
            elif "path" in item:
                folder = Path(item["path"])
                folder = folder if folder.is_absolute() else self.project_dir / folder
                if weights_file(folder):
                    entries.append(ModelEntry(item["name"], str(folder), description))
        return entries

    def discovered(self) -> list[ModelEntry]:
        """Run folders under checkpoints/ holding a checkpoint (a run in progress has none until it stops)."""
        if not self.checkpoints_dir.is_dir():
            return []
        folders = sorted(p for p in self.checkpoints_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [ModelEntry(folder.name, str(folder)) for folder in folders if weights_file(folder)]

    def entries(self) -> dict[str, ModelEntry]:
        configured = self.configured()
        known = {Path(e.location).resolve() for e in configured if not e.on_hub}
        extra = [e for e in self.discovered() if Path(e.location).resolve() not in known]
        return {e.name: e for e in configured + extra}

    def names(self) -> list[str]:
        """The display names of the models offered now."""
        return list(self.entries())

    def run_folders(self) -> dict[str, Path]:
        """Every offered local model, plus runs still training, that has metrics to plot."""
        folders = {e.name: Path(e.location) for e in self.entries().values() if not e.on_hub}
        known = {folder.resolve() for folder in folders.values()}
        if self.checkpoints_dir.is_dir():
            for folder in sorted(self.checkpoints_dir.iterdir()):
                if folder.resolve() not in known:
                    folders[folder.name] = folder
        return {name: folder for name, folder in folders.items() if (folder / METRICS_FILE).is_file()}

    # ------------------------------------------------------------------------------------------------------------
    # Loading, cached

    def entry(self, name: str) -> ModelEntry:
        entries = self.entries()
        if name not in entries:
            raise UserError(f"Unknown model '{name}'. Choose one of: {', '.join(entries) or 'none available'}.")
        return entries[name]

    def load(self, name: str):
        """(model, tokenizer), loaded once per checkpoint version."""
        entry = self.entry(name)
        version = entry.version()
        cached = self._loaded.get(name)
        if cached and cached[0] == version:
            return cached[1:]
        with self._load_lock:
            cached = self._loaded.get(name)
            if cached and cached[0] == version:
                return cached[1:]
            from transformers import AutoTokenizer

            model = load_model(entry.location)
            try:
                tokenizer = AutoTokenizer.from_pretrained(entry.location)
            except (OSError, ValueError) as error:
                raise UserError(f"cannot load the tokenizer of '{name}': {error}") from error
            if tokenizer.mask_token_id is None:
                raise UserError(f"the tokenizer of '{name}' has no [MASK] token")
            self._loaded[name] = (version, model, tokenizer)
            return model, tokenizer

    # ------------------------------------------------------------------------------------------------------------
    # Predictions

    def predict(self, name: str, text: str, top_k: int) -> dict:
        """One model's answer for an already checked text (see `check_text`)."""
        model, tokenizer = self.load(name)
        return predict_with(model, tokenizer, name, text, top_k)

    def answer(self, name: str, text: str, top_k) -> dict:
        """One side of the comparison: predictions, or the reason there are none (never an exception)."""
        return guarded(name, lambda: self.predict(name, check_text(text, top_k), top_k))

    def fill_mask(self, text: str, top_k: int, left_model: str, right_model: str) -> dict:
        """Both models' top-k guesses for every [MASK] of `text`: {"left": answer, "right": answer}."""
        return {"left": self.answer(left_model, text, top_k), "right": self.answer(right_model, text, top_k)}

    # ------------------------------------------------------------------------------------------------------------
    # Model cards

    def card(self, name: str) -> dict:
        """What a model is, how big, trained on what, how good: from its README, train_config and metrics."""
        entry = self.entry(name)
        folder = entry.folder
        if folder is None:
            return {"name": name, "description": entry.description or f"{entry.location} from the Hugging Face hub",
                    "parameters": None, "training_data": "see the hub model card", "valid_loss": None, "perplexity": None}
        readme = (folder / "README.md").read_text() if (folder / "README.md").is_file() else ""
        parameters = PARAMETERS_IN_CARD.search(readme)
        valid = [m for m in read_metrics(folder) if m.get("split") == "valid"]
        return {
            "name": name,
            "description": entry.description or card_description(readme) or "A training run found under checkpoints/.",
            "parameters": int(parameters.group(1).replace(",", "")) if parameters else None,
            "training_data": training_data(folder),
            "valid_loss": valid[-1]["loss"] if valid else None,
            "perplexity": valid[-1]["perplexity"] if valid else None,
        }


def mask_probabilities(model, tokenizer, text: str):
    """(input ids, [MASK] positions, probabilities over the vocabulary at each mask) for a checked text."""
    encoded = tokenizer(text, return_tensors="pt")
    input_ids = encoded["input_ids"]
    limit = model.config.max_position_embeddings
    if input_ids.shape[1] > limit:
        raise UserError(f"The text is too long: {input_ids.shape[1]} tokens, this model reads at most {limit}.")
    positions = (input_ids[0] == tokenizer.mask_token_id).nonzero().squeeze(1)
    with torch.inference_mode():
        hidden = model.base_model(**encoded).last_hidden_state[0, positions]
        return input_ids, positions, model.cls(hidden).float().softmax(dim=-1)


def predict_with(model, tokenizer, name: str, text: str, top_k: int) -> dict:
    """The answer JSON of `model` (any weights: a registry model, a training snapshot) for a checked text."""
    input_ids, positions, probabilities = mask_probabilities(model, tokenizer, text)
    scores, token_ids = probabilities.topk(int(top_k), dim=-1)
    masks = [
        {"index": int(position),
         "candidates": [{"token": token, "score": float(score)}
                        for token, score in zip(tokenizer.convert_ids_to_tokens(ids.tolist()), row.tolist())]}
        for position, ids, row in zip(positions, token_ids, scores)
    ]
    return {"model": name, "tokens": tokenizer.convert_ids_to_tokens(input_ids[0].tolist()), "masks": masks,
            "filled": fill_in(text, [m["candidates"][0]["token"] for m in masks])}


def guarded(name: str, compute) -> dict:
    """`compute()`, or {"model", "error"} with the reason it failed (never an exception)."""
    try:
        return compute()
    except UserError as error:
        return {"model": name, "error": str(error)}
    except Exception as error:  # noqa: BLE001 - a model that fails in any other way errors only its own column
        return {"model": name, "error": f"The model '{name}' failed: {type(error).__name__}: {error}"}


def fill_in(text: str, guesses: list[str]) -> str:
    """The student's own text with each [MASK] replaced, in order, by a guess (a ## piece joins its word)."""
    pieces = text.split(MASK)
    filled = pieces[0]
    for guess, piece in zip(guesses, pieces[1:]):
        if guess.startswith("##"):
            filled = filled.rstrip() + guess[2:]
        else:
            filled += guess
        filled += piece
    return filled


def card_description(readme: str) -> str:
    """The first paragraph after the title of a model card written by mlm.train."""
    body = readme.split("\n# ", 1)[-1].split("\n\n")
    return body[1].strip() if len(body) > 1 and not body[1].startswith("-") else ""


def training_data(folder: Path) -> str:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        return "unknown (no train_config.json)"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return "unknown (unreadable train_config.json)"
    if config.get("text_files"):
        source = "text file " + ", ".join(Path(f).name for f in config["text_files"])
    elif config.get("data_dir"):
        source = f"WikiText-2 from the folder {Path(config['data_dir']).name}"
    else:
        source = "WikiText-2 (raw) from the Hugging Face hub"
    if config.get("max_train_blocks"):
        source += f", first {config['max_train_blocks']:,} blocks"
    return f"{source}; {config.get('epochs', '?')} epochs" + (
        f", fine-tuned from {config['pretrained']}" if config.get("pretrained") else ""
    )

