"""App speed on this machine: start to first answer, and fill_mask latency in process and over HTTP.

    HF_HUB_OFFLINE=1 python benchmarks/bench_app.py            # the shipped checkpoints in checkpoints/
    HF_HUB_OFFLINE=1 python benchmarks/bench_app.py --checkpoints-dir DIR --output-stem /tmp/bench

Measures the two default models of the Compare tab (the first two the registry offers), one [MASK], top-5:
  * start: `python app.py` launched until its fill_mask endpoint first answers through gradio_client;
  * in process: Predictor.fill_mask (mlm.serve.answers) for both models together, after a warm-up;
  * over HTTP: gradio_client's Client.predict("/fill_mask") against that running app (queue, SSE and JSON included);
  * over HTTP while a training job runs (started as the Train tab does, through mlm.ui.jobs.jobs), when a local WikiText
    folder is there: shows whether inference stays responsive with both cores busy training;
  * the Explain endpoints in process, both models per measurement: layer_guesses and attention on the same
    sentence, score_sentence (pseudo-log-likelihood) on a 20-word sentence.
Writes <output-stem>.json and <output-stem>.md (default: a new record folder,
benchmarks/records/<date>_cpu_app-latency/), naming the machine and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SENTENCE = "The capital of France is [MASK]."
TOP_K = 5
EXPLAIN_SENTENCE = ("The old farmer walked slowly across the wide green field to check on the sheep before the "
                    "evening rain came.")  # 20 words
TARGETS = {"start_s": 20, "in_process_p50_ms": 40, "http_p50_ms": 150,
           "layer_guesses_p50_ms": 60, "attention_p50_ms": 60, "score_sentence_p50_ms": 150}


def machine() -> str:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    amx = " with AMX" if "amx_tile" in Path("/proc/cpuinfo").read_text() else ""
    return f"{os.cpu_count()}-core CPU, {model}{amx}; torch {torch.__version__} with {torch.get_num_threads()} threads"


def percentiles(seconds: list[float]) -> dict:
    milliseconds = sorted(1000 * s for s in seconds)
    return {"p50_ms": round(statistics.median(milliseconds), 2),
            "p95_ms": round(milliseconds[int(0.95 * (len(milliseconds) - 1))], 2), "runs": len(milliseconds)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def commit() -> str:
    """The commit measured, "+ changes" when the working tree differs from it (so a record names its code)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return head + (" + uncommitted changes" if dirty else "") if head else "unknown"


def start_app(checkpoints_dir: Path, left: str, right: str, app_env: dict[str, str] | None = None):
    """(server process, connected client, seconds from launch to the first fill_mask answer); `app_env`: more
    environment variables for the app."""
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_PORT": str(port),
           "MLM_CHECKPOINTS_DIR": str(checkpoints_dir), "GRADIO_ANALYTICS_ENABLED": "False", **(app_env or {})}
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    while True:
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            break
        except Exception:  # noqa: BLE001 - not listening yet
            if server.poll() is not None or time.perf_counter() - started > 120:
                raise SystemExit("the app did not start")
            time.sleep(0.1)
    answer = client.predict(SENTENCE, TOP_K, left, right, api_name="/fill_mask")
    first_answer_s = time.perf_counter() - started
    if any("error" in answer[side] for side in ("left", "right")):
        raise SystemExit(f"a model failed: {answer}")
    return server, client, first_answer_s


def timed_calls(client, runs: int, left: str, right: str) -> list[float]:
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        client.predict(SENTENCE, TOP_K, left, right, api_name="/fill_mask")
        seconds.append(time.perf_counter() - began)
    return seconds


def calls_while_training(client, runs: int, left: str, right: str, data_dir: Path) -> list[float]:
    """fill_mask over HTTP while a CPU training job (as the Train tab starts it) trains in another process."""
    from mlm.runs.metrics import read_metrics
    from mlm.ui.jobs.jobs import TrainingJobs, TrainRequest

    with tempfile.TemporaryDirectory() as scratch:
        jobs = TrainingJobs(scratch)
        run_dir = jobs.start(TrainRequest(data_dir=str(data_dir), max_train_blocks=20000, epochs=1))
        try:
            while not any(r.get("split") == "train" for r in read_metrics(run_dir)):  # past loading, training
                if not jobs.running():
                    raise SystemExit(f"the training job failed: see {run_dir}")
                time.sleep(0.5)
            return timed_calls(client, runs, left, right)
        finally:
            jobs.stop()
            jobs.wait(120)


def in_process(call, runs: int) -> list[float]:
    for _ in range(10):  # warm-up
        call()
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    return seconds


def explain_latencies(registry, runs: int, left: str, right: str) -> dict:
    """p50/p95 of each Explain endpoint for both models together, as the Explain tab calls them."""
    from mlm.serve.explain import Explainer

    explainer = Explainer(registry)
    calls = {
        "layer_guesses": lambda model: explainer.layer_guesses(SENTENCE, TOP_K, model),
        "attention": lambda model: explainer.attention(SENTENCE, model),
        "score_sentence": lambda model: explainer.score_sentence(EXPLAIN_SENTENCE, model),
    }
    for name, call in calls.items():
        for model in (left, right):
            if "error" in call(model):
                raise SystemExit(f"{name} failed on {model}: {call(model)['error']}")
    return {name: percentiles(in_process(lambda: (call(left), call(right)), runs)) for name, call in calls.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints-dir", type=Path, default=REPO / "checkpoints")
    parser.add_argument("--runs", type=int, default=200, help="timed calls per measurement")
    parser.add_argument("--output-stem", type=Path, help="default: a record folder, "
                        "benchmarks/records/<date>_cpu_app-latency/app_results")
    parser.add_argument("--train-data-dir", type=Path, default=REPO.parent / "shared" / "data" / "wikitext-2-v1",
                        help="WikiText folder for the while-training measurement (skipped if missing)")
    args = parser.parse_args()
    record = REPO / "benchmarks" / "records" / f"{time.strftime('%Y-%m-%d')}_cpu_app-latency"
    args.output_stem = args.output_stem or record / "app_results"
    args.output_stem.parent.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HUB_OFFLINE"] = "1"

    from mlm.serve.answers import Predictor
    from mlm.serve.registry import ModelRegistry

    load_at_start = os.getloadavg()[0]  # anything else busy on the cores shows up in every number below
    registry = ModelRegistry(args.checkpoints_dir)
    predictor = Predictor(registry)
    names = registry.names()
    if len(names) < 2:
        raise SystemExit(f"need two models in {args.checkpoints_dir}, found {names}")
    left, right = names[:2]

    server, client, first_answer_s = start_app(args.checkpoints_dir, left, right)
    try:
        timed_calls(client, 10, left, right)  # warm-up
        http = timed_calls(client, args.runs, left, right)
        training = (calls_while_training(client, args.runs, left, right, args.train_data_dir)
                    if args.train_data_dir.is_dir() else None)
    finally:
        server.terminate()
        server.wait(30)

    local = in_process(lambda: predictor.fill_mask(SENTENCE, TOP_K, left, right), args.runs)
    explain = explain_latencies(registry, args.runs, left, right)

    results = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d"), "commit": commit(),
        "load_average_at_start": load_at_start,
        "models": [left, right],
        "checkpoints": {name: os.path.relpath(registry.entry(name).location, REPO) for name in (left, right)},
        "request": {"text": SENTENCE, "top_k": TOP_K, "models_per_call": 2},
        "start_to_first_answer_s": round(first_answer_s, 2),
        "in_process_both_models": percentiles(local), "http_gradio_client_both_models": percentiles(http),
        "http_while_training": percentiles(training) if training else None,
        "explain_in_process_both_models": explain, "explain_score_sentence_text": EXPLAIN_SENTENCE,
        "targets": TARGETS,
    }
    args.output_stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.output_stem.with_suffix(".md").write_text(report(results))
    print(report(results))
    return 0


def report(results: dict) -> str:
    local, http = results["in_process_both_models"], results["http_gradio_client_both_models"]
    return f"""# App benchmark

Machine: {results['machine']} ({results['date']}; 1-minute load average {results['load_average_at_start']:.2f} at the start). Models: {' and '.join(f'`{m}`' for m in results['models'])},
one `[MASK]`, top-{results['request']['top_k']}, both models per call. Command: `HF_HUB_OFFLINE=1 python benchmarks/bench_app.py`.

| measurement | result | target |
| --- | --- | --- |
| `python app.py` start to first fill_mask answer | {results['start_to_first_answer_s']} s | ≤ {TARGETS['start_s']} s |
| fill_mask in process, p50 / p95 ({local['runs']} calls) | {local['p50_ms']} / {local['p95_ms']} ms | p50 ≤ {TARGETS['in_process_p50_ms']} ms |
| fill_mask over HTTP (gradio_client), p50 / p95 ({http['runs']} calls) | {http['p50_ms']} / {http['p95_ms']} ms | p50 ≤ {TARGETS['http_p50_ms']} ms |
""" + (f"""| the same while a CPU training job runs (nice 10, its own process), p50 / p95 | {training['p50_ms']} / {training['p95_ms']} ms | – |
""" if (training := results["http_while_training"]) else "") + "".join(
        f"| Explain `{name}` in process, both models, p50 / p95 ({row['runs']} calls) | {row['p50_ms']} / "
        f"{row['p95_ms']} ms | p50 ≤ {TARGETS[name + '_p50_ms']} ms |\n"
        for name, row in results["explain_in_process_both_models"].items()) + (
        f"\n`layer_guesses` and `attention` on the sentence above; `score_sentence` on the 20-word "
        f"\"{results['explain_score_sentence_text']}\" (one batched pass per model).\n")


if __name__ == "__main__":
    sys.exit(main())
