"""Training benchmark: the original loop, HF Trainer, and the package's presets, side by side on one machine.

    python benchmarks/bench_train.py --data-dir ../shared/data/wikitext-2-v1 --parts reference,trainer,scratch,fast,bert
    python benchmarks/bench_train.py --data-dir ../shared/data/wikitext-2-v1 --parts reference,scratch,fast,fast-long --stem h200
    python benchmarks/bench_train.py --data-dir ../shared/data/wikitext-2-v1 --parts cpu          # the 2-core CPU
    python benchmarks/bench_train.py --data-dir ../shared/data/wikitext-2-v1 --parts multi        # 2 GPUs of one host

Every implementation trains the same from-scratch BertForMaskedLM and is scored by the same evaluator here (plain
`model(...)` forward, full logits, fixed 15% validation masks), so the losses compare exactly. "Loop" time is the
training loop with its per-epoch evaluations; "command" time is the whole `python -m mlm.train` process (start-up,
data loading from cache, graph capture, checkpoints). Model FLOPs per token count the full model the original loop
runs (6 x matmul parameters, the 30,522-way output layer at every position, plus attention), so achieved TFLOP/s
compare like for like even though the package's path skips most of the output layer.
Results: results_<stem>.json and .md in a new record folder, benchmarks/records/<date>_<stem>_bench-train/
(or --record DIR), with the command and commit beside them (benchmarks/records.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlm.runs.metrics import read_metrics  # noqa: E402
from mlm.data.blocks import load_mlm_data  # noqa: E402
from mlm.data.masking import IGNORE_INDEX, MaskingSpec, fixed_validation_masks  # noqa: E402
from mlm.model.build import scratch_model  # noqa: E402
from records import record_folder  # noqa: E402 - benchmarks/records.py

SEQ = 128


def model_flops_per_token(config, seq: int = SEQ) -> float:
    layer = 4 * config.hidden_size**2 + 2 * config.hidden_size * config.intermediate_size
    matmul_params = config.num_hidden_layers * layer + config.hidden_size**2 + config.vocab_size * config.hidden_size
    attention = 2 * 2 * config.num_hidden_layers * seq * config.hidden_size  # QK^T and AV, multiply-adds x2
    return 6 * matmul_params + 3 * attention


@torch.no_grad()
def evaluate(model, inputs, labels, batch_size: int = 64, dropout: bool = False) -> dict:
    """Token-weighted loss, perplexity and top-1 over the fixed validation masks, with the plain HF forward.

    `dropout=True` scores in training mode, as a loop that forgets `model.eval()` would.
    """
    model.train(dropout)
    device = next(model.parameters()).device
    loss_sum, count, hits = 0.0, 0, 0
    for start in range(0, len(inputs), batch_size):
        ids, target = inputs[start : start + batch_size].to(device), labels[start : start + batch_size].to(device)
        logits = model(input_ids=ids).logits.float()
        loss_sum += F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction="sum").item()
        counted = target != IGNORE_INDEX
        count += counted.sum().item()
        hits += ((logits.argmax(-1) == target) & counted).sum().item()
    model.train()
    loss = loss_sum / count
    return {"valid_loss": loss, "perplexity": math.exp(loss), "top1": hits / count}


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------------------------
# Baselines


def reference_loop(data, epochs: float, batch_size: int = 8, lr: float = 5e-4, max_steps: int | None = None,
                   shuffle: bool = True, weight_decay: float = 0.0, seed: int = 0) -> dict:
    """The original loop: collator on the CPU, fp32, `.item()` every step, AdamW with warm-up and linear decay."""
    from transformers import DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    model = scratch_model(data.tokenizer).to(device).train()
    collator = DataCollatorForLanguageModeling(data.tokenizer, mlm_probability=0.15)
    blocks = [{"input_ids": row} for row in data.train_blocks.tolist()]
    loader = torch.utils.data.DataLoader(blocks, batch_size=batch_size, shuffle=shuffle, collate_fn=collator)
    total = max_steps or math.ceil(epochs * len(loader))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(0.06 * total), total)
    step, started = 0, time.perf_counter()
    while step < total:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            loss.item()
            step += 1
            if step == total:
                break
        if max_steps is None:
            evaluate(model, *data.valid_masked, batch_size=16)  # the original evaluated after every epoch
    synchronize()
    seconds = time.perf_counter() - started
    return {"loop_s": seconds, "steps": total, "tokens_per_s": total * batch_size * SEQ / seconds, "model": model}


def hf_trainer(data, epochs: float, batch_size: int = 8, lr: float = 5e-4, model=None, max_steps: int = -1,
               train_blocks: list[dict] | None = None, eval_blocks: list[dict] | None = None, **arguments) -> dict:
    """Hugging Face Trainer with bf16 and otherwise default arguments: what a user would pick.

    `arguments` override TrainingArguments; `train_blocks`/`eval_blocks` replace the plain blocks (for example with
    run_mlm's special_tokens_mask column). With `eval_blocks` the Trainer also evaluates every epoch, with its own
    dynamic masks, and its eval_loss curve is returned.
    """
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    seed = arguments.pop("seed", 0)
    torch.manual_seed(seed)
    model = model or scratch_model(data.tokenizer)
    args = TrainingArguments(**{
        "output_dir": tempfile.mkdtemp(), "per_device_train_batch_size": batch_size, "learning_rate": lr,
        "num_train_epochs": epochs, "warmup_steps": 0.06, "bf16": torch.cuda.is_available(), "save_strategy": "no",
        "report_to": [], "logging_strategy": "no", "max_steps": max_steps, "disable_tqdm": True, "seed": seed,
        "eval_strategy": "epoch" if eval_blocks else "no", "per_device_eval_batch_size": 16, "prediction_loss_only": True,
        **arguments,
    })
    blocks = train_blocks or [{"input_ids": row} for row in data.train_blocks.tolist()]
    trainer = Trainer(model=model, args=args, train_dataset=blocks, eval_dataset=eval_blocks,
                      data_collator=DataCollatorForLanguageModeling(data.tokenizer, mlm_probability=0.15))
    started = time.perf_counter()
    output = trainer.train()
    synchronize()
    seconds = time.perf_counter() - started
    steps = output.global_step
    curve = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    return {"loop_s": seconds, "steps": steps, "tokens_per_s": steps * batch_size * SEQ / seconds, "model": trainer.model,
            **({"trainer_eval_loss": curve} if curve else {})}


# ----------------------------------------------------------------------------------------------------------------
# The package, through its command line


def package_run(name: str, args: list[str], data_dir: str, launcher: list[str] | None = None) -> dict:
    """Run `python -m mlm.train` as a user would; times the whole command and reads its metrics."""
    run_dir = Path(tempfile.mkdtemp()) / name
    command = (launcher or [sys.executable]) + ["-m", "mlm.train", "--data-dir", data_dir, "--output-dir", str(run_dir),
                                                 "--log-every", "100", *args]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"},
                               timeout=300)  # a hung multi-process run must not take the whole benchmark with it
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{completed.stderr[-3000:]}")
    ready = float(re.search(r"ready after ([\d.]+) s", completed.stderr).group(1))
    metrics = read_metrics(run_dir)
    train = [m for m in metrics if m["split"] == "train"]
    valid = [m for m in metrics if m["split"] == "valid"]
    steps = train[-1]["step"]
    return {  # loop: everything after start-up (steps, evaluations, the final checkpoint write, process exit)
        "command_s": seconds, "ready_s": ready, "loop_s": seconds - ready, "train_s": train[-1]["elapsed_s"],
        "steps": steps, "tokens_per_s": train[-1]["tokens_per_s"], "run_dir": str(run_dir),
        "peak_memory_mb": max((m["max_memory_mb"] for m in train if "max_memory_mb" in m), default=None),
        "valid_curve": [(m["epoch"], m["loss"]) for m in valid],
    }


def score(result: dict, data, flops_per_token: float, model=None) -> dict:
    """Add the shared evaluator's figures and FLOP rates; drop the model object."""
    from transformers import AutoModelForMaskedLM

    model = result.pop("model", None) or model
    if model is None:
        model = AutoModelForMaskedLM.from_pretrained(result["run_dir"], use_safetensors=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result.update(evaluate(model.to(device).float(), *data.valid_masked))
    result["model_tflops_per_token"] = flops_per_token / 1e12
    result["achieved_tflop_s"] = flops_per_token * result["tokens_per_s"] / 1e12
    return result


def peak_memory_mb() -> float | None:
    if not torch.cuda.is_available():
        return None
    peak = torch.cuda.max_memory_allocated() / 2**20
    torch.cuda.reset_peak_memory_stats()
    return peak


# ----------------------------------------------------------------------------------------------------------------


def write_results(results: dict, folder: Path, stem: str) -> None:
    out = folder / f"results_{stem}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        "| run | loop s | command s | steps | tokens/s | valid loss | ppl | top-1 | peak GPU MiB | TFLOP/s | time vs reference | tokens/s vs reference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    reference = results["runs"].get("reference", {})
    for name, r in results["runs"].items():
        same_work = reference.get("steps") == r.get("steps")
        time_ratio = f"{reference['loop_s'] / r['loop_s']:.1f}x" if reference and same_work else ""
        rate_ratio = f"{r['tokens_per_s'] / reference['tokens_per_s']:.1f}x" if reference else ""
        fmt = lambda key, spec: format(r[key], spec) if r.get(key) is not None else "-"  # noqa: E731
        rows.append(f"| {name} | {fmt('loop_s', '.1f')} | {fmt('command_s', '.1f')} | {fmt('steps', ',')} | "
                    f"{fmt('tokens_per_s', ',.0f')} | {fmt('valid_loss', '.3f')} | {fmt('perplexity', '.1f')} | "
                    f"{fmt('top1', '.3f')} | {fmt('peak_memory_mb', ',.0f')} | {fmt('achieved_tflop_s', '.2f')} | {time_ratio} | {rate_ratio} |")
    curves = [f"- {name}: " + " / ".join(f"{loss:.3f} (epoch {epoch:.2f})" for epoch, loss in r["valid_curve"])
              for name, r in results["runs"].items() if r.get("valid_curve")]
    if curves:
        rows += ["", "Validation loss as the run logged it (fixed masks; several processes sum their shares):", "", *curves]
    header = f"# Training benchmark: {results['machine']}\n\ntorch {results['torch']}, {results['date']}\n\n"
    (folder / f"results_{stem}.md").write_text(header + "\n".join(rows) + "\n" + results.get("notes", ""))
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--parts", default="reference,trainer,scratch,scratch_compiled,fast,fast-long,bert")
    parser.add_argument("--bert-config", default=str(ROOT.parent / "shared/data/bert-base-uncased/config.json"))
    parser.add_argument("--stem", help="results file name part (default: gpu name or 'cpu')")
    parser.add_argument("--record", help="record folder to write into (default: a new one under benchmarks/records/)")
    parser.add_argument("--only", type=lambda text: text.split(","), help="with --parts multi: these runs only")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    torch.backends.cuda.matmul.allow_tf32 = True

    data = load_mlm_data(args.data_dir)
    spec = MaskingSpec.from_tokenizer(data.tokenizer)
    data.valid_masked = fixed_validation_masks(data.valid_blocks, spec)
    flops = model_flops_per_token(scratch_model(data.tokenizer).config)
    machine = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    runs: dict[str, dict] = {}
    stem = args.stem or ("cpu" if not torch.cuda.is_available() else re.sub(r"\W+", "_", machine.lower()))
    folder = record_folder(stem, "bench-train", args.record)

    def save() -> None:  # after every part, so a run cut short (a device time limit) keeps what it measured
        write_results({"machine": machine, "torch": torch.__version__, "date": str(date.today()), "runs": runs}, folder, stem)

    if "reference" in parts:
        runs["reference"] = score(reference_loop(data, epochs=3), data, flops)
        runs["reference"]["peak_memory_mb"] = peak_memory_mb()
        save()
    if "trainer" in parts:
        runs["hf_trainer_bf16"] = score(hf_trainer(data, epochs=3), data, flops)
        runs["hf_trainer_bf16"]["peak_memory_mb"] = peak_memory_mb()
    if "scratch" in parts:
        runs["package_scratch"] = score(package_run("scratch", ["--preset", "scratch"], args.data_dir), data, flops)
        save()
    if "scratch_compiled" in parts:
        runs["package_scratch_compiled"] = score(package_run("scratch_c", ["--preset", "scratch", "--compile"], args.data_dir), data, flops)
    if "fast" in parts:
        runs["package_fast"] = score(package_run("fast", ["--preset", "fast"], args.data_dir), data, flops)
        save()
    if "fast-long" in parts:
        runs["package_fast_long"] = score(package_run("fast-long", ["--preset", "fast-long"], args.data_dir), data, flops)
    if "bert" in parts:  # fine-tuning throughput on the bert-base architecture (random weights), batch 8
        runs.update(bert_base_throughput(data, args))
    if "cpu" in parts:  # short runs: the CPU needs minutes per epoch
        runs["reference"] = score(reference_loop(data, epochs=1, max_steps=40), data, flops)
        runs["package_scratch"] = score(package_run("scratch", ["--preset", "scratch", "--max-train-blocks", "480",
                                                                "--max-eval-blocks", "64", "--epochs", "1", "--log-every", "20"],
                                                    args.data_dir), data, flops)
    if "multi" in parts:
        runs.update(multi_gpu(data, args))
    save()


def bert_base_folder(bert_config: str) -> str:
    """A bert-base-uncased-shaped checkpoint with random weights (the real ones are not available offline)."""
    from transformers import BertConfig, BertForMaskedLM

    folder = tempfile.mkdtemp()
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig.from_json_file(bert_config)).save_pretrained(folder)
    return folder


def bert_base_throughput(data, args, steps: int = 300) -> dict:
    from transformers import AutoModelForMaskedLM

    folder = bert_base_folder(args.bert_config)
    flops = model_flops_per_token(AutoModelForMaskedLM.from_pretrained(folder).config)
    trainer = hf_trainer(data, epochs=1, lr=5e-5, model=AutoModelForMaskedLM.from_pretrained(folder), max_steps=steps)
    trainer.pop("model")
    trainer["peak_memory_mb"] = peak_memory_mb()
    package = package_run("bert", ["--preset", "finetune", "--pretrained", folder, "--epochs", "1",
                                   "--max-train-blocks", str(8 * steps), "--max-eval-blocks", "64"], args.data_dir)
    for result in (trainer, package):
        result["achieved_tflop_s"] = flops * result["tokens_per_s"] / 1e12
    return {"bert_base_hf_trainer_bf16_b8": trainer, "bert_base_package_finetune_b8": package}


def multi_gpu(data, args) -> dict:
    """accelerate launch on 2 GPUs against 1 GPU: scratch and bert-base, each at the same global batch (same curve?),
    bert-base also at 32 per GPU (scaling), with and without CUDA graphs."""
    launch2 = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no"]
    folder = bert_base_folder(args.bert_config)
    bert = ["--preset", "finetune", "--pretrained", folder, "--epochs", "1", "--max-train-blocks", str(64 * 150),
            "--max-eval-blocks", "256", "--log-every", "25", "--eval-every", "50"]
    plans = {
        "scratch_1gpu_b16": (["--preset", "scratch", "--batch-size", "16"], None),
        "scratch_2gpu_b8x2": (["--preset", "scratch"], launch2),
        "bert_base_1gpu_b32": (bert + ["--batch-size", "32"], None),
        "bert_base_1gpu_b64": (bert + ["--batch-size", "64"], None),
        "bert_base_2gpu_b32x2": (bert + ["--batch-size", "32"], launch2),
        "bert_base_2gpu_b32x2_eager": (bert + ["--batch-size", "32", "--no-cuda-graphs"], launch2),
    }
    runs = {}
    for name, (flags, launcher) in plans.items():
        if args.only and name not in args.only:
            continue
        try:
            runs[name] = package_run(name, flags, args.data_dir, launcher=launcher)
        except (RuntimeError, subprocess.TimeoutExpired) as error:  # one failed run must not lose the others' figures
            runs[name] = {"error": str(error)[-2000:]}
        print(name, json.dumps(runs[name])[:300], flush=True)
    return runs


if __name__ == "__main__":
    main()
