"""Does an initialisation shorten the loss plateau? Trains recipes in one process with the from-scratch model's
init changed (the Trainer's `initialise` argument), and records each validation curve (the data behind the mimetic init, mlm/model/init.py).

    python benchmarks/init_ablation.py --data-dir DIR --out OUT "NAME|INIT|SEED|FLAGS" ...

INIT is `bert` (Hugging Face's) or parts joined by `+`: `sinSTD` (sinusoidal position embeddings at that std),
`mimSCALE` (keys = queries, both SCALE x Hugging Face's); `sin0.02+mim2` is `--init mimetic`. FLAGS are
`python -m mlm.train` flags. Results: OUT/init_ablation.json (committed: records/2026-11-29_h200_init-ablation/).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlm.config import config_from_args  # noqa: E402
from mlm.model.init import mimetic_attention, sinusoidal_positions  # noqa: E402
from mlm.runs.metrics import read_metrics  # noqa: E402
from mlm.train.trainer import Trainer  # noqa: E402


def with_init(spec: str):
    """What `spec` does to a model built with Hugging Face's init (the Trainer calls it on the fresh model)."""
    def initialise(model) -> None:
        for part in spec.split("+"):
            if part.startswith("sin"):
                sinusoidal_positions(model, float(part[3:]))
            elif part.startswith("mim"):
                mimetic_attention(model, float(part[3:]))
            elif part != "bert":
                raise ValueError(f"unknown init part {part!r}")
    return initialise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("runs", nargs="+", help="NAME|INIT|SEED|FLAGS")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for line in args.runs:
        name, spec, seed, flags = line.split("|")
        argv = ["--data-dir", args.data_dir, "--output-dir", tempfile.mkdtemp() + "/run", *shlex.split(flags),
                "--seed", seed, "--init", "bert"]
        trainer = Trainer(config_from_args(argv)[0], initialise=with_init(spec))
        started = time.perf_counter()
        trainer.fit()
        valid = [m for m in read_metrics(trainer.run_dir) if m["split"] == "valid"]
        results[name] = {"init": spec, "seed": int(seed), "flags": flags, "seconds": time.perf_counter() - started,
                         "curve": [(round(m["epoch"], 2), round(m["loss"], 3)) for m in valid]}
        print(name, results[name]["curve"], flush=True)
        (out / "init_ablation.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
