"""Model cards for the Compare tab: what a model is, how big, trained on what, how good (from its folder's files)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mlm.serve import readable
from mlm.runs.layout import CONFIG_FILE
from mlm.runs.metrics import read_metrics

PARAMETERS_IN_CARD = re.compile(r"\(([\d,]+) parameters")


def model_card(entry) -> dict:
    """What a registry entry (mlm.serve.registry.ModelEntry) is, how big, trained on what, how good: from its README,
    train_config and metrics."""
    folder = entry.folder
    if folder is None:
        return {"name": entry.name,
                "description": entry.description or f"{entry.location} from the Hugging Face hub",
                "parameters": None, "training_data": "see the hub model card", "valid_loss": None, "perplexity": None}
    readme = (folder / "README.md").read_text() if (folder / "README.md").is_file() else ""
    parameters = PARAMETERS_IN_CARD.search(readme)
    valid = [m for m in read_metrics(folder) if m.get("split") == "valid"]
    return {
        "name": entry.name,
        "description": entry.description or card_description(readme) or "A training run found under checkpoints/.",
        "parameters": int(parameters.group(1).replace(",", "")) if parameters else None,
        "training_data": training_data(folder),
        "valid_loss": valid[-1]["loss"] if valid else None,
        "perplexity": valid[-1]["perplexity"] if valid else None,
        "summary": readable.plain_summary(train_config(folder)),
    }


def card_description(readme: str) -> str:
    """The first paragraph after the title of a model card written by mlm.train.trainer."""
    body = readme.split("\n# ", 1)[-1].split("\n\n")
    return body[1].strip() if len(body) > 1 and not body[1].startswith("-") else ""


def train_config(folder: Path) -> dict:
    """The run's train_config.json, or {} where it is missing or unreadable."""
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}


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

