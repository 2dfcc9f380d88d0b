"""A run that fits a lesson, on a CPU: validation loss after 5 and 10 minutes.

    python benchmarks/bench_cpu_budget.py --data-dir ../shared/data/wikitext-2-v1            # 6 runs, ~50 minutes
    python benchmarks/bench_cpu_budget.py --data-dir ... --minutes 0.3 --smoke --record /tmp/smoke   # smoke test

Runs, one after the other, each as its own `python -m mlm.train` process on a quiet machine:
  * `--preset budget --time-budget M`: the learning-rate schedule laid over M minutes counted from the process's
    start (set-up, evaluations and the final checkpoint included), so it ends with the learning rate at 0;
  * `--preset fast --max-minutes M` and `--preset scratch --max-minutes M`: today's presets stopped by the cap,
    mid-schedule.
For each it records the validation loss of the checkpoint it leaves (scored here, after the run, by
bench_train.py's evaluator on fixed 15% masks of the whole validation set: a run stopped by the cap saves without a
last validation), steps, the learning rate at the end, the wall-clock time of the whole command, and whether the
loss left the plateau (<= 5.5).
Results: results_cpu_budget.json and .md in a new record folder, benchmarks/records/<date>_cpu_lesson-budget/
(or --record DIR; --keep FILE.json keeps the runs of presets not re-run from an earlier record).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train import evaluate  # noqa: E402
from mlm.runs.metrics import read_metrics  # noqa: E402
from mlm.data.blocks import load_mlm_data  # noqa: E402
from mlm.data.masking import MaskingSpec, fixed_validation_masks  # noqa: E402
from mlm.model.files import load_model  # noqa: E402
from mlm.runs.snapshots import checkpoint_step  # noqa: E402
from mlm.train.snapshots import PLATEAU_EXIT_LOSS  # noqa: E402
from records import record_folder  # noqa: E402 - benchmarks/records.py

RUNS = (("budget", "--time-budget"), ("fast", "--max-minutes"), ("scratch", "--max-minutes"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SMOKE = ["--max-train-blocks", "256", "--max-eval-blocks", "32"]  # --smoke: checks the script, measures nothing


def train(preset: str, flag: str, minutes: float, data_dir: str, folder: Path, extra: list[str], valid) -> dict:
    run_dir = folder / f"{preset}-{minutes:g}min"
    command = [sys.executable, "-m", "mlm.train", "--preset", preset, flag, f"{minutes:g}", "--data-dir", data_dir,
               "--output-dir", str(run_dir), *extra]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
    train_records = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    last = train_records[-1] if train_records else {"step": 0, "epoch": 0.0, "lr": None}
    score = evaluate(load_model(run_dir), *valid)
    return {"preset": preset, "limit": f"{flag} {minutes:g}", "minutes": minutes, "wall_s": wall,
            "steps": checkpoint_step(run_dir), "valid_loss": score["valid_loss"], "top1": score["top1"],
            "final_lr": last["lr"], "left_plateau": score["valid_loss"] <= PLATEAU_EXIT_LOSS,
            "tokens_per_s": train_records[-1]["tokens_per_s"] if train_records else None,
            "command": "python -m mlm.train " + " ".join(command[3:]).replace(str(run_dir), "RUN")}


def write_results(results: dict, stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")

    def final_lr(run: dict) -> str:
        return "-" if run["final_lr"] is None else f"{run['final_lr']:.2e}"

    rows = "\n".join(
        f"| {r['preset']} | `{r['limit']}` | {r['wall_s']:.0f} | {r['steps']:,} | "
        f"{r['valid_loss']:.3f} | {r['top1']:.3f} | {final_lr(r)} | {'yes' if r['left_plateau'] else 'no'} |"
        for r in results["runs"])
    stem.with_suffix(".md").write_text(
        f"# A run that fits a lesson: {results['machine']}\n\n"
        f"torch {results['torch']}, {results['threads']} threads, {results['date']}. Validation loss on "
        f"`wiki.valid.tokens` with fixed 15% masks; the plateau is left at loss <= {PLATEAU_EXIT_LOSS}. "
        f"`--time-budget` ends the learning-rate schedule with the budget; `--max-minutes` stops the run where it "
        f"is, mid-schedule (wall s: the whole command).\n\n"
        f"| preset | limit | wall s | steps | valid loss | top-1 | final lr | left the plateau |\n"
        f"| --- | --- | --- | --- | --- | --- | --- | --- |\n{rows}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--presets", nargs="+", default=[preset for preset, _ in RUNS], choices=[p for p, _ in RUNS],
                        help="run only these; the other presets' runs already in the results file are kept")
    parser.add_argument("--smoke", action="store_true", help="tiny data: checks that the script runs")
    parser.add_argument("--record", help="record folder to write into (default: a new one under benchmarks/records/)")
    parser.add_argument("--keep", help="an earlier results_cpu_budget.json whose runs of the presets not re-run are kept")
    args = parser.parse_args()
    data = load_mlm_data(args.data_dir, max_train_blocks=1, max_eval_blocks=32 if args.smoke else None)
    valid = fixed_validation_masks(data.valid_blocks, MaskingSpec.from_tokenizer(data.tokenizer))
    runs = []
    with tempfile.TemporaryDirectory(prefix="cpu-budget-") as folder:
        for minutes in args.minutes:
            for preset, flag in RUNS:
                if preset not in args.presets:
                    continue
                runs.append(train(preset, flag, minutes, args.data_dir, Path(folder), SMOKE if args.smoke else [], valid))
                print(json.dumps(runs[-1]), flush=True)
    stem = record_folder("cpu", "lesson-budget", args.record) / "results_cpu_budget"
    if args.keep:  # keep the runs of the presets not re-run, in the file's order
        kept = [r for r in json.loads(Path(args.keep).read_text())["runs"] if r["preset"] not in args.presets]
        runs = sorted(kept + runs, key=lambda r: (r["minutes"], [p for p, _ in RUNS].index(r["preset"])))
    write_results({"machine": f"CPU {cpu_name()}", "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "date": str(date.today()), "runs": runs}, stem)


if __name__ == "__main__":
    main()
