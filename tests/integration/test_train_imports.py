"""A from-scratch training command never imports transformers (issue 12: ~3 s of start-up) nor torch's compiler
(`torch._dynamo`, which `torch.optim` pulls in: 2-3.5 s more), and what it writes is still a transformers checkpoint: `pipeline("fill-mask")` loads it and guesses what the plain-torch model guesses."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from transformers import pipeline

from conftest import OFFLINE_ENV, REPO, WIKITEXT_DIR
from mlm.model import bert
from mlm.runs.layout import STATE_DIR, STATE_FILE
from mlm.data.tokenizer import TokenizerFiles

# Runs the training command's own main() in a fresh process, then reports which libraries that process imported.
WRAPPER = """
import json, sys
import mlm.train.trainer
code = mlm.train.trainer.main(sys.argv[1:])
print("IMPORTED " + json.dumps({"rc": code, "transformers": "transformers" in sys.modules,
                                "datasets": "datasets" in sys.modules, "torch._dynamo": "torch._dynamo" in sys.modules,
                                "sympy": "sympy" in sys.modules}))
"""


def train_in_a_fresh_process(*arguments: str) -> dict:
    done = subprocess.run([sys.executable, "-c", WRAPPER, *arguments], cwd=REPO, env=OFFLINE_ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("IMPORTED ")]
    return json.loads(line.removeprefix("IMPORTED "))


def test_a_scratch_run_and_its_resume_never_import_transformers_and_load_in_fill_mask(tmp_path):
    run_dir = tmp_path / "run"
    tiny = ["--max-train-blocks", "32", "--max-eval-blocks", "8", "--log-every", "2"]
    first = train_in_a_fresh_process("--preset", "scratch", "--data-dir", str(WIKITEXT_DIR), "--output-dir",
                                     str(run_dir), "--epochs", "1", "--snapshots", "3", *tiny)
    assert first == {"rc": 0, "transformers": False, "datasets": False, "torch._dynamo": False, "sympy": False}
    snapshots = json.loads((run_dir / "snapshots" / "manifest.json").read_text())["snapshots"]
    assert snapshots[0]["format"] == "seed"  # the random start was rebuilt from the seed, bit for bit, in-process

    resumed = train_in_a_fresh_process("--resume", str(run_dir), "--epochs", "2")
    assert resumed == {"rc": 0, "transformers": False, "datasets": False, "torch._dynamo": False, "sympy": False}
    assert json.loads((run_dir / STATE_DIR / STATE_FILE).read_text())["step"] == 8

    text = "the cat sat on the [MASK] and looked at the garden ."
    guesses = pipeline("fill-mask", model=str(run_dir), top_k=5)(text)
    model, tokenizer = bert.BertForMaskedLM.from_pretrained(run_dir).eval(), TokenizerFiles(run_dir)
    ids = tokenizer([text])["input_ids"][0]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, ids.index(tokenizer.mask_token_id)]
    assert [g["token"] for g in guesses] == logits.topk(5).indices.tolist()


def test_importing_the_trainer_leaves_the_interpreter_as_it_was():
    """Bytecode is the launcher's business (benchmarks/README.md): where an image writes none, importing the trainer
    does not turn it on."""
    env = {**{k: v for k, v in OFFLINE_ENV.items() if k != "PYTHONPYCACHEPREFIX"}, "PYTHONDONTWRITEBYTECODE": "1"}
    code = "import sys, mlm.train.trainer; print(sys.dont_write_bytecode, sys.pycache_prefix)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "None"]
