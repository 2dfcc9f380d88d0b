"""Where does the issue's 6.39 for the original recipe come from? The recipe in plausible forms, side by side.

The package and the reference loop of `bench_train.py` end 3 epochs of the original recipe (batch 8, lr 5e-4, 6%
warm-up, linear decay, clip 1.0) near 6.12 on `wiki.valid.tokens`, while issue 2 quotes 6.39 for "a run of the
original recipe". Each variant below changes one thing a seed script may have done differently, trains the
from-scratch model once, and is scored several ways:

  * `valid_loss`        the shared evaluator of bench_train.py (fixed 15% masks, model.eval());
  * `valid_loss_dropout` the same masks scored in training mode (an evaluation that forgot `model.eval()`);
  * `raw_valid_loss`    the same evaluator on `wiki.valid.raw` blocks (the raw split, rare words kept);
  * `trainer_eval_loss` (Trainer variants) the Trainer's own per-epoch eval_loss: dynamic masks, eval batch 16.

    python benchmarks/seed_recipe.py --data-dir ../shared/data/wikitext-2-v1 --raw-dir ../shared/data/wikitext-2-raw-v1 --gpus 2

Each variant runs in its own process (round-robin over the GPUs); results: seed_recipe_<stem>.{json,md} in a new record folder
benchmarks/records/<date>_<stem>_seed-recipe/ (or --record DIR, which also keeps the variants of earlier invocations).
"""

from __future__ import annotations

import argparse
import json
import os
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

from bench_train import evaluate, hf_trainer, reference_loop  # noqa: E402
from mlm.data.blocks import group_lines, load_mlm_data  # noqa: E402
from mlm.data.corpus import load_corpus, read_lines  # noqa: E402
from mlm.data.masking import MaskingSpec, fixed_validation_masks  # noqa: E402
from records import record_folder  # noqa: E402 - benchmarks/records.py

# name -> (what changes, how to train). Trainer variants run fp32 (no TF32, no bf16) unless they say otherwise.
FP32 = {"bf16": False, "tf32": False}
VARIANTS = {
    "trainer_fp32": ("HF Trainer, fp32, eval every epoch (batch 16)", ("trainer", FP32)),
    "trainer_fp32_seed1": ("as trainer_fp32, seed 1", ("trainer", {**FP32, "seed": 1})),
    "trainer_fp16": ("HF Trainer with fp16 autocast and loss scaling", ("trainer", {"bf16": False, "fp16": True})),
    "trainer_weight_decay": ("HF Trainer, fp32, weight decay 0.01 on every weight", ("trainer", {**FP32, "weight_decay": 0.01})),
    "trainer_run_mlm_masks": ("HF Trainer, fp32, keeping run_mlm's special_tokens_mask column (Trainer drops it by "
                              "default): [UNK] can be masked and predicted",
                              ("trainer_run_mlm", {**FP32, "remove_unused_columns": False})),
    "loop_fp32": ("the reference loop with TF32 off", ("loop", {})),
    "loop_no_shuffle": ("the reference loop, blocks in corpus order", ("loop", {"shuffle": False})),
    "loop_weight_decay": ("the reference loop with torch AdamW's default weight decay 0.01", ("loop", {"weight_decay": 0.01})),
    "loop_no_shuffle_seed1": ("as loop_no_shuffle, seed 1", ("loop", {"shuffle": False, "seed": 1})),
    # HF Trainer silently wraps the model in DataParallel when it sees several GPUs: batch 8 per GPU, fewer steps
    "loop_batch32": ("the reference loop at batch 32 (Trainer's batch 8 on 4 visible GPUs)", ("loop", {"batch_size": 32})),
    "loop_batch64": ("the reference loop at batch 64 (Trainer's batch 8 on 8 visible GPUs)", ("loop", {"batch_size": 64})),
    "loop_literal_unk": ("the reference loop on the .tokens files as they are: `<unk>` left as text (< un ##k >)",
                         ("loop_literal", {})),
}


def with_run_mlm_mask(blocks: torch.Tensor, tokenizer) -> list[dict]:
    """Blocks as run_mlm hands them to the collator: only the [CLS]/[SEP] the tokenizer added count as special."""
    added = {tokenizer.cls_token_id, tokenizer.sep_token_id}
    return [{"input_ids": row, "special_tokens_mask": [int(t in added) for t in row]} for row in blocks.tolist()]


def literal_unk_blocks(data_dir: str, tokenizer) -> dict[str, torch.Tensor]:
    """The WikiText .tokens splits without the `<unk>` -> [UNK] mapping, grouped as usual."""
    return {split: group_lines(read_lines(Path(data_dir) / f"wiki.{stem}.tokens"), tokenizer, 128)
            for split, stem in (("train", "train"), ("validation", "valid"))}


def run_variant(name: str, data_dir: str, raw_dir: str, max_blocks: int | None = None) -> dict:
    _, (kind, options) = VARIANTS[name]
    data = load_mlm_data(data_dir, max_train_blocks=max_blocks, max_eval_blocks=max_blocks)
    spec = MaskingSpec.from_tokenizer(data.tokenizer)
    valid = data.valid_masked = fixed_validation_masks(data.valid_blocks, spec)  # the reference loop scores each epoch
    raw_blocks = group_lines(load_corpus(raw_dir)["validation"], data.tokenizer, 128)
    raw_valid = fixed_validation_masks(raw_blocks[:max_blocks], spec)

    literal = literal_unk_blocks(data_dir, data.tokenizer)
    literal_valid = fixed_validation_masks(literal["validation"][:max_blocks], spec)

    if kind == "loop_literal":  # train and score on the literal-<unk> text
        data.train_blocks = literal["train"][:max_blocks]
        data.valid_masked = valid = literal_valid
    if kind.startswith("loop"):
        result = reference_loop(data, epochs=3, **options)
    else:
        plain_eval = [{"input_ids": row} for row in data.valid_blocks.tolist()]
        blocks = {}
        if kind == "trainer_run_mlm":
            blocks = {"train_blocks": with_run_mlm_mask(data.train_blocks, data.tokenizer),
                      "eval_blocks": with_run_mlm_mask(data.valid_blocks, data.tokenizer)}
        result = hf_trainer(data, epochs=3, **{"eval_blocks": plain_eval, **blocks}, **options)
    model = result.pop("model").float()
    result["valid_loss"] = evaluate(model, *valid)["valid_loss"]
    result["valid_loss_dropout"] = evaluate(model, *valid, dropout=True)["valid_loss"]
    result["raw_valid_loss"] = evaluate(model, *raw_valid)["valid_loss"]
    result["literal_unk_valid_loss"] = evaluate(model, *literal_valid)["valid_loss"]
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return result


def run_all(args) -> dict:
    """Every variant in its own process, round-robin over the GPUs, all at once."""
    out = Path(tempfile.mkdtemp())
    jobs = {}
    for i, name in enumerate(args.variants):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(i % args.gpus), "OMP_NUM_THREADS": "2"}
        log = open(out / f"{name}.log", "w")
        command = [sys.executable, __file__, "--data-dir", args.data_dir, "--raw-dir", args.raw_dir,
                   "--variant", name, "--result", str(out / f"{name}.json")]
        if args.max_blocks:
            command += ["--max-blocks", str(args.max_blocks)]
        jobs[name] = (subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    results = {}
    for name, (process, log) in jobs.items():
        process.wait()
        log.close()
        result_file = out / f"{name}.json"
        if process.returncode == 0 and result_file.exists():
            results[name] = {"change": VARIANTS[name][0], **json.loads(result_file.read_text())}
        else:
            results[name] = {"change": VARIANTS[name][0], "error": (out / f"{name}.log").read_text()[-1500:]}
        print(name, json.dumps(results[name])[:400], flush=True)
    return results


def write_results(results: dict, machine: str, folder: Path, stem: str) -> None:
    path = folder / f"seed_recipe_{stem}.json"
    earlier = json.loads(path.read_text())["runs"] if path.exists() else {}  # variants from earlier invocations stay
    results = {**earlier, **results}
    document = {"machine": machine, "torch": torch.__version__, "date": str(date.today()), "concurrent": True, "runs": results}
    path.write_text(json.dumps(document, indent=2) + "\n")
    rows = ["| variant | what changes | valid loss | with dropout | raw valid | literal-`<unk>` valid | Trainer eval_loss per epoch | loop s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | {r['change']} | failed | | | | | |")
            continue
        curve = " / ".join(f"{x:.3f}" for x in r.get("trainer_eval_loss", [])) or "-"
        literal = f"{r['literal_unk_valid_loss']:.3f}" if "literal_unk_valid_loss" in r else "-"
        rows.append(f"| {name} | {r['change']} | {r['valid_loss']:.3f} | {r['valid_loss_dropout']:.3f} | "
                    f"{r['raw_valid_loss']:.3f} | {literal} | {curve} | {r['loop_s']:.0f} |")
    devices = ", ".join(sorted({r.get("device", machine) for r in results.values()}))
    header = (f"# The original recipe, variants: {devices}\n\ntorch {torch.__version__}, {date.today()}; the variants of "
              "one invocation ran at the same time (loop seconds are not speeds). Written by `seed_recipe.py`.\n\n")
    (folder / f"seed_recipe_{stem}.md").write_text(header + "\n".join(rows) + "\n")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--raw-dir", required=True, help="folder with wiki.valid.raw")
    parser.add_argument("--variants", type=lambda text: text.split(","), default=list(VARIANTS))
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--stem", default="gpu")
    parser.add_argument("--record", help="record folder to write into (default: a new one under benchmarks/records/)")
    parser.add_argument("--max-blocks", type=int, help="train and score on this many blocks (a quick check of the plumbing)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        started = time.perf_counter()
        result = run_variant(args.variant, args.data_dir, args.raw_dir, args.max_blocks)
        result["process_s"] = time.perf_counter() - started
        Path(args.result).write_text(json.dumps(result))
        return
    load_mlm_data(args.data_dir)  # fill the blocks cache once, before the processes race for it
    machine = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    folder = record_folder(args.stem, "seed-recipe", args.record)
    write_results(run_all(args), machine, folder, args.stem)


if __name__ == "__main__":
    main()
