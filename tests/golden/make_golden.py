"""Writes tests/golden/shipped_answers.json: the shipped checkpoints' answers to 20 sentences through the public
serving API (fill_mask, layer_guesses, score_sentence, fill_mask_at). Made once before the package's redesign
(issue 20); tests/integration/test_golden.py checks the code still gives the same answers.

    python tests/golden/make_golden.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SENTENCES = [
    "The capital of France is [MASK].",
    "Paris is the [MASK] of France.",
    "She [MASK] to the store yesterday.",
    "The keys to the cabinet [MASK] on the table.",
    "He played the [MASK] in the orchestra.",
    "The war ended in [MASK].",
    "The [MASK] was released as a single in 1998.",
    "The river flows into the [MASK] sea.",
    "[MASK] is the largest city in the United States.",
    "The album was recorded in [MASK] and released the following year.",
    "The game was developed by [MASK] and published in Japan.",
    "I [MASK] you very much.",
    "The cat sat on the [MASK].",
    "The [MASK] of the song was written by the band.",
    "In 1945 the [MASK] surrendered to the allies.",
    "The [MASK] [MASK] is a famous building.",
    "The team won the [MASK] cup in [MASK].",
    "Water is made of hydrogen and [MASK].",
    "The church was built in the [MASK] century.",
    "He was born in London and [MASK] in Paris.",
]
TOP_K = 5


def answers() -> dict:
    from mlm.serve.answers import Predictor
    from mlm.serve.explain import Explainer
    from mlm.serve.registry import ModelRegistry
    from mlm.serve.timelapse import SnapshotModels

    registry = ModelRegistry(REPO / "checkpoints")
    predictor = Predictor(registry)
    explainer = Explainer(registry)
    snapshots = SnapshotModels(predictor)
    models = [name for name in registry.names() if registry.entry(name).folder is not None]
    runs = snapshots.runs()
    result = {"models": models, "top_k": TOP_K, "sentences": []}
    for text in SENTENCES:
        row = {"text": text, "fill_mask": predictor.fill_mask(text, TOP_K, models[0], models[1]),
               "layer_guesses": {m: explainer.layer_guesses(text, TOP_K, m) for m in models},
               "score_sentence": {m: explainer.score_sentence(text.replace("[MASK]", "it"), m) for m in models},
               "fill_mask_at": {}}
        for run in runs:
            steps = [entry["step"] for entry in snapshots.list_snapshots(run)]
            row["fill_mask_at"][run] = {str(step): snapshots.fill_mask_at(text, TOP_K, run, step)
                                        for step in (steps[0], steps[len(steps) // 2], steps[-1])}
        result["sentences"].append(row)
    return result


if __name__ == "__main__":
    out = Path(__file__).with_name("shipped_answers.json")
    out.write_text(json.dumps(answers(), indent=1, sort_keys=True) + "\n")
    print(out, out.stat().st_size)
