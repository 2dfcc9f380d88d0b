"""Any path a user can type names a corpus: brackets, spaces and unicode in a data folder and in --text-file paths.

A folder named `corpus[2]` used to end the training command in `FileNotFoundError: .../corpus[[]2]/wiki.train.tokens`:
the path was glob-escaped for `datasets` and then opened as a plain path (issue 20).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import OFFLINE_ENV, REPO, WIKITEXT_DIR
from mlm.data.blocks import load_mlm_data
from test_blocks import own_cache  # noqa: F401 - the same fixtures
from test_tokenizer import tokenizer  # noqa: F401

AWKWARD_NAMES = ["corpus[2]", "my corpus [2] é", "*?[!x] {a,b}", "données"]


def small_wikitext(folder: Path) -> Path:
    """The first lines of WikiText-2's tokenized train and validation files: enough for 16 + 4 blocks of 128."""
    folder.mkdir(parents=True)
    for split, count in (("train", 200), ("valid", 100)):
        lines = (WIKITEXT_DIR / f"wiki.{split}.tokens").read_text(encoding="utf-8").split("\n")[:count]
        (folder / f"wiki.{split}.tokens").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def assert_same_blocks(data, expected) -> None:
    assert torch.equal(data.train_blocks, expected.train_blocks)
    assert torch.equal(data.valid_blocks, expected.valid_blocks)


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_a_data_folder_under_any_name(tmp_path, tokenizer, name):
    plain = load_mlm_data(str(small_wikitext(tmp_path / "plain")), tokenizer=tokenizer)
    awkward = load_mlm_data(str(small_wikitext(tmp_path / "parent [1] ü" / name)), tokenizer=tokenizer)
    assert_same_blocks(awkward, plain)
    assert len(plain.train_blocks) >= 16 and len(plain.valid_blocks) >= 4


@pytest.mark.parametrize("name", [f"{name}.txt" for name in AWKWARD_NAMES])
def test_a_text_file_under_any_name(tmp_path, tokenizer, name):
    text = (WIKITEXT_DIR / "wiki.valid.tokens").read_text(encoding="utf-8")[:20_000]
    (tmp_path / "plain.txt").write_text(text, encoding="utf-8")
    folder = tmp_path / "my corpus [2] é"
    folder.mkdir()
    (folder / name).write_text(text, encoding="utf-8")
    plain = load_mlm_data(text_files=[str(tmp_path / "plain.txt")], tokenizer=tokenizer)
    awkward = load_mlm_data(text_files=[str(folder / name)], tokenizer=tokenizer)
    assert_same_blocks(awkward, plain)


def train(tmp_path: Path, *data_arguments: str) -> Path:
    """The real training command, as small as it goes: 16 training blocks, one epoch."""
    output_dir = tmp_path / "runs [1] é" / "run"
    command = [sys.executable, "-m", "mlm.train", *data_arguments, "--output-dir", str(output_dir),
               "--max-train-blocks", "16", "--max-eval-blocks", "4", "--epochs", "1", "--log-every", "2"]
    done = subprocess.run(command, cwd=REPO, env={**OFFLINE_ENV, "MLM_CACHE": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (output_dir / "model.safetensors").is_file()
    return output_dir


def test_the_training_command_takes_a_data_folder_with_brackets_spaces_and_unicode(tmp_path):
    folder = small_wikitext(tmp_path / "my corpus [2] é")
    run_dir = train(tmp_path, "--data-dir", str(folder))
    assert str(folder) in (run_dir / "README.md").read_text(encoding="utf-8")  # the card names the source


def test_the_training_command_takes_a_text_file_with_brackets_spaces_and_unicode(tmp_path):
    notes = tmp_path / "my corpus [2] é" / "notes [1] é.txt"
    notes.parent.mkdir()
    notes.write_text((WIKITEXT_DIR / "wiki.valid.tokens").read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    run_dir = train(tmp_path, "--text-file", str(notes))
    assert str(notes) in (run_dir / "README.md").read_text(encoding="utf-8")
