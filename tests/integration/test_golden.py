"""The shipped checkpoints answer as they did before the package's redesign (issue 20): fill_mask, layer_guesses,
score_sentence and fill_mask_at on 20 sentences, against tests/golden/shipped_answers.json (made by
tests/golden/make_golden.py before the move). Same tokens and texts; every number within 1e-6."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
TOLERANCE = 1e-6


def differences(expected, actual, where: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return [f"{where}: keys {sorted(expected)} != {sorted(actual)}"]
        return [d for key in expected for d in differences(expected[key], actual[key], f"{where}.{key}")]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} items != {len(actual)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")]
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(expected, (int, float)) and isinstance(actual, (int, float)) and (
                math.isclose(expected, actual, rel_tol=0, abs_tol=TOLERANCE)):
            return []
        return [f"{where}: {expected!r} != {actual!r}"]
    return [] if expected == actual else [f"{where}: {expected!r} != {actual!r}"]


def test_the_shipped_models_answer_as_before_the_redesign():
    sys.path.insert(0, str(GOLDEN))
    from make_golden import answers

    expected = json.loads((GOLDEN / "shipped_answers.json").read_text())
    actual = json.loads(json.dumps(answers(), sort_keys=True))  # the same JSON round trip as the file
    found = differences(expected, actual)
    assert not found, f"{len(found)} differences, first: {found[:5]}"


def test_the_comparison_notices_a_changed_score_and_a_changed_token():
    answer = {"masks": [{"candidates": [{"token": "paris", "score": 0.5}]}]}
    assert not differences(answer, json.loads(json.dumps(answer)))
    assert differences(answer, {"masks": [{"candidates": [{"token": "paris", "score": 0.500002}]}]})
    assert differences(answer, {"masks": [{"candidates": [{"token": "london", "score": 0.5}]}]})
