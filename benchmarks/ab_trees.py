"""The same training command from two source trees, alternately on one machine: did a change keep loss and speed?

    python benchmarks/ab_trees.py --before OLD_TREE --after . --preset fast --repeats 2 \
        -- --data-dir DATA --tokenizer TOKENIZER_FOLDER

Each tree's `python -m mlm.train` runs as a whole command in its own process, before and after taking turns (so a
machine that warms up or slows down affects both alike). Per run: the final validation loss, the whole command's
seconds, and the training steps' tokens/s and mean step time from its metrics.jsonl (steps only: start-up,
evaluations and checkpoints excluded). Results: ab_trees.json and .md in a new record folder (benchmarks/records.py).
Issue 20 used it to check the redesign (before: the commit before the move) on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from records import record_folder  # noqa: E402 - benchmarks/records.py


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(tree: Path, preset: str, arguments: list[str], output_dir: Path) -> dict:
    command = [sys.executable, "-m", "mlm.train", "--preset", preset, "--output-dir", str(output_dir), *arguments]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"error": done.stderr[-2000:], "command_s": seconds}
    records = read_jsonl(output_dir / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"]
    steps, train_s = train[-1]["step"], train[-1]["elapsed_s"]
    return {"valid_loss": valid[-1]["loss"], "command_s": seconds, "steps": steps,
            "step_ms": 1000 * train_s / steps, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train[1:] or train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="source tree of the old code (a folder holding mlm/)")
    parser.add_argument("--after", default=".", help="source tree of the new code")
    parser.add_argument("--preset", action="append", required=True, help="repeatable")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--record", help="record folder (default: a new one under benchmarks/records/)")
    parser.add_argument("--hardware", default="gpu")
    parser.add_argument("arguments", nargs="*", help="after --: flags for every training command")
    args = parser.parse_args()
    trees = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    folder = record_folder(args.hardware, "ab-trees", args.record)
    import torch  # only to name the machine

    machine = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    results = {"machine": machine, "torch": torch.__version__, "runs": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for preset in args.preset:
            for repeat in range(args.repeats):
                for side, tree in trees.items():
                    name = f"{preset}/{side}/{repeat}"
                    results["runs"][name] = run(tree, preset, args.arguments, Path(scratch) / name.replace("/", "-"))
                    print(name, json.dumps(results["runs"][name]), flush=True)
                    (folder / "ab_trees.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = ["| run | valid loss | command s | steps | step ms | tokens/s |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results["runs"].items():
        rows.append(f"| {name} | failed | | | | |" if "error" in r else
                    f"| {name} | {r['valid_loss']:.4f} | {r['command_s']:.1f} | {r['steps']:,} | {r['step_ms']:.3f} | "
                    f"{r['tokens_per_s']:,.0f} |")
    (folder / "ab_trees.md").write_text(f"# Before and after on {machine}\n\ntorch {torch.__version__}\n\n" + "\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
