"""Speedrun tools for issue 12 (one GPU): step throughput, a profile of one step, and recipe sweeps in one process.

    python benchmarks/speedrun.py --data-dir ../shared/data/wikitext-2-v1 --out /tmp/out throughput profile sweep

* throughput: median milliseconds of a graphed training step per variant (preset + flags), tokens/s, and TFLOP/s
  by bench_train's model-FLOP count.
* profile: torch profiler summary of eager training steps of a preset (kernels, their share of GPU time), plus the
  graphed step's time: benchmarks/records/2026-11-30_h200_step-profile/profile_h200.txt is its output.
* sweep: whole training runs of many recipes in this one process (imports paid once), each evaluated after every
  epoch; records when validation first reaches 3.9 and 3.5 (seconds since the run's Trainer was created).
Variants are flags of `python -m mlm.train`: THROUGHPUT below; for the sweep `--variant name=flags` arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train import model_flops_per_token  # noqa: E402
from mlm.runs.metrics import read_metrics  # noqa: E402
from mlm.config import config_from_args  # noqa: E402
from mlm.train.trainer import Trainer  # noqa: E402

# name: flags. The `--kernels` variants are A/Bs of mlm/fast's hand-written backwards (benchmarks/LOG.md rows 24,
# 26, 31): torch's for every piece, or for one piece while the others stay on.
THROUGHPUT = {
    "fast_b128": "--preset fast",
    "fast_b128_torch_kernels": "--preset fast --kernels torch",
    "fast_b128_torch_linear": "--preset fast --kernels layer_norm,output_loss",
    "fast_b128_torch_layer_norm": "--preset fast --kernels linear,output_loss",
    "fast_b128_torch_cross_entropy": "--preset fast --kernels linear,layer_norm",
    "fast_b128_noclip": "--preset fast --max-grad-norm 0",
    "fast_b256": "--preset fast --batch-size 256",
    "fast_b512": "--preset fast --batch-size 512",
    "scratch_b8": "--preset scratch",
    "scratch_b8_torch_kernels": "--preset scratch --kernels torch",
    "scratch_b8_torch_cross_entropy": "--preset scratch --kernels linear",  # "auto" keeps torch's LayerNorm here
    "scratch_b8_bf16": "--preset scratch --mixed-precision bf16",
}


def trainer_for(flags: str, data_dir: str, **overrides) -> Trainer:
    argv = ["--data-dir", data_dir, "--output-dir", tempfile.mkdtemp() + "/run", *shlex.split(flags)]
    config, _ = config_from_args(argv)
    return Trainer(dataclasses.replace(config, **overrides))


def time_steps(trainer: Trainer, steps: int = 60, warmup: int = 10) -> float:
    """Median ms of one training step (graph replay where the trainer uses graphs), over `steps` timed steps."""
    batches, step_fn = trainer.parts.batches, trainer.parts.step_fn
    order = batches.epoch_order(0)
    times = []
    for i in range(warmup + steps):
        batch = batches.batch(order, i % batches.steps_per_epoch)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step_fn(batch)
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def throughput(args, flops: float) -> dict:
    results = {}
    for name, flags in THROUGHPUT.items():
        if args.steps and name not in args.steps:
            continue
        trainer = trainer_for(flags, args.data_dir)
        trainer.build()
        ms = time_steps(trainer)
        tokens = trainer.config.batch_size * trainer.config.block_size
        results[name] = {"flags": flags, "ms_per_step": ms, "tokens_per_s": tokens / ms * 1e3,
                         "achieved_tflop_s": flops * tokens / ms / 1e9}
        trainer.parts.step_fn.close()
        print(name, json.dumps(results[name]), flush=True)
    return results


def profile(args, flops: float, flags: str = "--preset fast") -> str:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as torch_profile

    graphed = trainer_for(flags, args.data_dir)
    graphed.build()
    graphed_ms = time_steps(graphed)
    graphed.parts.step_fn.close()
    trainer = trainer_for(flags, args.data_dir, cuda_graphs=False)
    trainer.build()
    eager_ms = time_steps(trainer, steps=20)
    batches = trainer.parts.batches
    order = batches.epoch_order(0)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(3):
            trainer.parts.step_fn(batches.batch(order, i))
        torch.cuda.synchronize()
    tokens = trainer.config.batch_size * trainer.config.block_size
    kernels = sum(event.device_type == DeviceType.CUDA for event in prof.events()) / 3
    header = (f"# One training step of `{flags}` on {torch.cuda.get_device_name()} (torch {torch.__version__})\n"
              f"# graphed step: {graphed_ms:.3f} ms = {tokens / graphed_ms * 1e3:,.0f} tokens/s = "
              f"{flops * tokens / graphed_ms / 1e9:.1f} TFLOP/s by bench_train's model-FLOP count; "
              f"eager step: {eager_ms:.3f} ms; {kernels:.0f} GPU kernels and copies a step\n"
              "# the table covers 3 eager steps (times are totals over the 3)\n\n")
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=45, max_name_column_width=70)
    return header + table


def first_time_below(valid: list[dict], target: float):
    hit = next((m for m in valid if m["loss"] <= target), None)
    return None if hit is None else {"epoch": hit["epoch"], "wall_s": hit["wall_s"]}


def sweep(args, variants: dict[str, str]) -> dict:
    results = {}
    for name, flags in variants.items():
        started = time.perf_counter()
        trainer = trainer_for(flags, args.data_dir)
        try:
            trainer.fit()
        except Exception as error:  # noqa: BLE001 - one failed recipe must not lose the others
            results[name] = {"flags": flags, "error": repr(error)[-500:]}
            continue
        metrics = read_metrics(trainer.run_dir)
        valid = [m for m in metrics if m["split"] == "valid"]
        train = [m for m in metrics if m["split"] == "train"]
        results[name] = {
            "flags": flags, "seconds": time.perf_counter() - started, "final_valid": valid[-1]["loss"],
            "to_3.9": first_time_below(valid, 3.9), "to_3.5": first_time_below(valid, 3.5),
            "train_s": train[-1]["elapsed_s"], "tokens_per_s": train[-1]["tokens_per_s"],
            "curve": [(round(m["epoch"], 2), round(m["loss"], 3), round(m["wall_s"], 1)) for m in valid],
        }
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "curve"}), flush=True)
        print("   ", results[name]["curve"], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", action="append", default=[], help="name=flags, for the sweep")
    parser.add_argument("--steps", type=lambda text: text.split(","), help="throughput: only these variants")
    parser.add_argument("--profile-flags", default="--preset fast", help="profile: the training flags to profile")
    parser.add_argument("parts", nargs="+", choices=["throughput", "profile", "sweep"])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from mlm.data.tokenizer import load_tokenizer
    from mlm.model.build import scratch_model

    flops = model_flops_per_token(scratch_model(load_tokenizer()).config)
    report = {"machine": torch.cuda.get_device_name(), "torch": torch.__version__}
    if "throughput" in args.parts:  # before the profiler: once it has run, kernels in this process run slower
        report["throughput"] = throughput(args, flops)
    if "profile" in args.parts:
        (out / "profile.txt").write_text(profile(args, flops, args.profile_flags))
    if "sweep" in args.parts:
        variants = dict(v.split("=", 1) for v in args.variant)
        report["sweep"] = sweep(args, variants)
    (out / "speedrun.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
