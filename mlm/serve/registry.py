"""Which models the app offers, and loading them (no Gradio here).

The registry offers, by display name:
  * the models listed in `checkpoints/models.json` (shipped checkpoints; hub models only while the hub is reachable),
    each only if its folder is really there;
  * every other run folder under `checkpoints/` that holds a finished checkpoint, named after its folder, so a run
    trained from the app appears without a restart.

Loaded models are kept in a bounded cache (mlm.serve.lru): the configured (shipped) ones always, at most
`extra_models` others, least recently used out first; a model is loaded again if its weights file changed (a
resumed run). Asking the models questions is mlm.serve.answers' job.

A failure to load reaches the client in the user's terms only: server paths and exception details go to the log.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from mlm.errors import UserError
from mlm.hub import hub_reachable
from mlm.model.files import load_model, weights_file
from mlm.runs.layout import METRICS_FILE
from mlm.runs.durability import servable
from mlm.serve.cards import model_card
from mlm.serve.lru import LRU

logger = logging.getLogger(__name__)

MODELS_FILE = "models.json"
EXTRA_MODELS = 2  # loaded models kept besides the configured ones (about 50-100 MB each)


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
    def __init__(self, checkpoints_dir: str | Path, extra_models: int = EXTRA_MODELS):
        self.checkpoints_dir = Path(checkpoints_dir)
        self.project_dir = self.checkpoints_dir.resolve().parent  # models.json paths are relative to the project
        # name -> (version, model, tokenizer); the shipped models are pinned, never evicted
        self._loaded: LRU[str, tuple] = LRU(extra_models, pinned=self.is_configured)
        self._load_lock = threading.Lock()  # one load at a time: two requests never load the same model twice

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

    def is_configured(self, name: str) -> bool:
        return any(entry.name == name for entry in self.configured())

    def discovered(self) -> list[ModelEntry]:
        """Run folders under checkpoints/ holding a checkpoint (a run in progress has none until it stops)."""
        if not self.checkpoints_dir.is_dir():
            return []
        folders = sorted(p for p in self.checkpoints_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        return [ModelEntry(folder.name, str(folder)) for folder in folders if weights_file(folder) and servable(folder)]

    def entries(self) -> dict[str, ModelEntry]:
        configured = self.configured()
        known = {Path(e.location).resolve() for e in configured if not e.on_hub}
        extra = [e for e in self.discovered() if Path(e.location).resolve() not in known]
        return {e.name: e for e in configured + extra}

    def names(self) -> list[str]:
        """The display names of the models offered now."""
        return list(self.entries())

    def run_folders(self, entries: dict[str, ModelEntry] | None = None) -> dict[str, Path]:
        """Every offered local model (of `entries`, default: `self.entries()`), plus runs still training, that has
        metrics to plot."""
        entries = self.entries() if entries is None else entries
        folders = {e.name: Path(e.location) for e in entries.values() if not e.on_hub}
        known = {folder.resolve() for folder in folders.values()}
        if self.checkpoints_dir.is_dir():
            for folder in sorted(self.checkpoints_dir.iterdir()):
                if folder.resolve() not in known:
                    folders[folder.name] = folder
        return {name: folder for name, folder in folders.items() if (folder / METRICS_FILE).is_file()}

    def entry(self, name: str) -> ModelEntry:
        entries = self.entries()
        if name not in entries:
            raise UserError(f"Unknown model '{name}'. Choose one of: {', '.join(entries) or 'none available'}.")
        return entries[name]

    def card(self, name: str) -> dict:
        """What a model is, how big, trained on what, how good (see mlm.serve.cards)."""
        return model_card(self.entry(name))

    # ------------------------------------------------------------------------------------------------------------
    # Loading, cached

    def load(self, name: str):
        """(model, tokenizer), loaded once per checkpoint version and kept while the cache bound allows."""
        entry = self.entry(name)
        version = entry.version()
        with self._load_lock:
            cached = self._loaded.get(name)
            if cached and cached[0] == version:
                return cached[1:]
            from transformers import AutoTokenizer

            try:
                model = load_model(entry.location)
            except UserError as error:  # its message names the server's folder: for the log only
                logger.warning("model %r: %s", name, error)
                raise UserError(f"cannot load the checkpoint of '{name}': its files are damaged or incomplete.") \
                    from error
            try:
                tokenizer = AutoTokenizer.from_pretrained(entry.location)
            except (OSError, ValueError) as error:
                logger.warning("model %r: tokenizer: %s", name, error)
                raise UserError(f"cannot load the tokenizer of '{name}'.") from error
            if tokenizer.mask_token_id is None:
                raise UserError(f"the tokenizer of '{name}' has no [MASK] token")
            self._loaded.put(name, (version, model, tokenizer))  # replaces an older version of it
            return model, tokenizer

    def loaded(self) -> list[str]:
        """Names of the models in memory, least recently used first."""
        return self._loaded.keys()
