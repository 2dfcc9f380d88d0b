"""Where a `python -m mlm.train` command's time goes outside the training steps (issue 12, target 3).

    python benchmarks/startup_phases.py --preset fast --data-dir ../shared/data/wikitext-2-v1 --output-dir /tmp/run

Runs the same Trainer as the command, in a fresh process, with timers around imports, CUDA start-up, data
loading, model building, graph capture, evaluations and checkpoint writing; prints one JSON line of seconds per
phase (the process start itself is timed by the caller) and which heavy libraries the process imported (a
from-scratch run imports neither transformers nor datasets). Arguments are the training command's own. On an
image that writes no bytecode, launch it as the command would be (PYTHONPYCACHEPREFIX, benchmarks/README.md);
`bytecode_cache` in the output is the prefix the process used.
"""

import time

STARTED = time.perf_counter()
MARKS = {}


def mark(name: str) -> None:
    MARKS[name] = round(time.perf_counter() - STARTED, 3)


import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

mark("import torch")
import mlm.runs.manifest  # noqa: E402
import mlm.train.checkpointing  # noqa: E402
import mlm.train.setup  # noqa: E402
import mlm.train.step  # noqa: E402
import mlm.train.trainer  # noqa: E402

mark("import mlm.train.trainer")
DURATIONS: dict[str, float] = {}


def timed(owner, name: str, label) -> None:
    """Add the seconds of every call of `owner.name` to DURATIONS[label] (`label`: a text, or a function of the
    call's arguments that gives one)."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            key = label if isinstance(label, str) else label(*args, **kwargs)
            DURATIONS[key] = round(DURATIONS.get(key, 0.0) + time.perf_counter() - begin, 3)

    setattr(owner, name, wrapper)


def mark_first_step(owner) -> None:
    """Issue 12's start-up ends where the first training step begins (after the step-0 validation)."""
    original = owner.__call__

    def wrapper(self, *args, **kwargs):
        if type(self) is owner and "first training step" not in MARKS:  # not the graph's warm-up steps
            mark("first training step")
        return original(self, *args, **kwargs)

    owner.__call__ = wrapper


for step_class in (mlm.train.step.TrainStep, mlm.train.step.GraphedTrainStep):
    mark_first_step(step_class)
timed(mlm.train.setup, "load_plain_tokenizer", "data")  # a from-scratch run reads the tokenizer without transformers
timed(mlm.train.setup, "load_mlm_data", "data")
timed(mlm.train.setup, "initial_model", "model")
timed(mlm.train.step.GraphedTrainStep, "__init__", "graph capture (with 3 warm-up steps)")
timed(mlm.train.trainer.Trainer, "evaluate",  # the one at step 0 is start-up (before the first step), the others the loop's
      lambda trainer, step, *_: "evaluation at step 0" if step == 0 else "evaluations after step 0")
timed(mlm.train.trainer.Trainer, "save", "checkpoint writing (every save)")
timed(mlm.train.checkpointing.Checkpointer, "save_best", "  of which best/")
timed(mlm.train.checkpointing, "save_training_state", "  of which optimizer state")
timed(mlm.train.checkpointing.Checkpointer, "save_model_files", "  of which model files (best/ too)")
timed(mlm.train.checkpointing.Checkpointer, "weights_usable", "  of which the finite-weights check")
timed(mlm.runs.manifest, "file_sha256", "  of which sha256 + fsync (manifest; summed over its threads)")


def main() -> None:
    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")
        mark("CUDA context")
    code = mlm.train.trainer.main(sys.argv[1:])
    mark("end of main")
    imported = {name: name in sys.modules for name in ("transformers", "datasets", "accelerate", "torch._dynamo")}
    # issue 12's target 3b: evaluations after step 0 and checkpoint writing against the loop (first step to exit)
    loop = MARKS["end of main"] - MARKS.get("first training step", MARKS["end of main"])
    outside = DURATIONS.get("evaluations after step 0", 0.0) + DURATIONS.get("checkpoint writing (every save)", 0.0)
    summary = {"loop_s": round(loop, 3), "evaluations_and_checkpoints_share": round(outside / loop, 4) if loop else None}
    print("PHASES " + __import__("json").dumps({"marks": MARKS, "durations": DURATIONS, **summary, "imported": imported,
                                                "bytecode_cache": sys.pycache_prefix, "rc": code}), flush=True)


if __name__ == "__main__":
    main()
