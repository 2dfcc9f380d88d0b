"""A lecture hall and its worst visitor, against the real app: many students at once, the closed-loop ceiling, a
flood from one client and a 40 MB text, each with the latency another student sees meanwhile.

    HF_HUB_OFFLINE=1 python benchmarks/bench_load.py              # the full run (about 4 minutes, quiet machine)
    HF_HUB_OFFLINE=1 python benchmarks/bench_load.py --smoke --output-stem /tmp/load   # a quick check of the script
    HF_HUB_OFFLINE=1 python benchmarks/bench_load.py --scenarios closed_loop,one_client --app-env NAME=VALUE ...
                                                                  # an A/B of a server setting, some scenarios only

The app runs as `python app.py` in its own process; the clients run here, in this process, as a class's browsers
would: each student is a session of its own speaking Gradio's HTTP protocol (POST /gradio_api/call/fill_mask, then
the result's event stream), both default models per call, top-5. Scenarios:
  * students: N students, each asking, reading the answer, thinking ~T s (uniform 0.5T-1.5T), asking again; most
    sentences are their own (templates with random words), a quarter are the tab's examples;
  * closed loop: C clients (a session each) asking back to back with sentences never seen before (no answer
    cache): the ceiling in requests/s; the same with 500-token, 10-mask texts;
  * one client: a single client asking back to back with new sentences: fill_mask's latency over HTTP when
    nothing else waits (the answer cache bypassed, so each answer is a forward pass);
  * flood: one session fires F events at once while another student asks one question after another;
  * big text: one request carrying a 40 MB text while another student asks one question after another.
The server's resident memory is sampled throughout, and the CPU seconds of the server and of the clients are counted
per scenario (from /proc). Writes <output-stem>.json and .md (default: a new record folder,
benchmarks/records/<date>_cpu_load-test/), naming the machine and the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

from bench_app import commit, machine, start_app
from load_client import TOP_K, App, summary, with_memory

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Imported once here: imported at a student's first question, it would stall every client for seconds.
from mlm.ui.compare_tab import EXAMPLES  # noqa: E402

SCENARIOS = ("students", "closed_loop", "closed_loop_long", "one_client", "flood", "big_text")
TARGETS = {"students_p95_ms": 500, "students_errors": 0}
SUBJECTS = ["The teacher", "My brother", "The old man", "A small dog", "The president", "Her friend", "The team",
            "The company", "Our neighbour", "The student", "The band", "The city council"]
VERBS = ["bought", "found", "painted", "sold", "opened", "visited", "cleaned", "described", "built", "lost"]
PLACES = ["in the morning", "near the river", "after the war", "in 1998", "at the station", "during the summer",
          "in London", "on the island", "before the storm", "at school"]
WORDS = ["history", "river", "music", "the", "city", "album", "war", "season", "people", "game", "north", "film"]


def student_sentence(rng: random.Random) -> str:
    """A sentence a student might type, rarely the same twice."""
    if rng.random() < 0.25:
        return rng.choice(EXAMPLES)
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} the [MASK] {rng.choice(PLACES)} with {rng.choice(SUBJECTS).lower()}."


def long_text(rng: random.Random, words: int = 490, masks: int = 10) -> str:
    tokens = [rng.choice(WORDS) for _ in range(words)]
    for position in rng.sample(range(words), masks):
        tokens[position] = "[MASK]"
    return " ".join(tokens)


async def students(app: App, count: int, think_s: float, duration_s: float, seed: int) -> dict:
    results: list[tuple[float, str]] = []
    deadline = time.perf_counter() + duration_s

    async def student(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        await asyncio.sleep(rng.uniform(0, think_s))  # they do not all press Enter at the same instant
        while time.perf_counter() < deadline:
            results.append(await app.fill_mask(f"student-{seed}-{index}", student_sentence(rng)))
            await asyncio.sleep(rng.uniform(0.5 * think_s, 1.5 * think_s))

    began = time.perf_counter()
    (_, memory) = await with_memory(app, asyncio.gather(*(student(i) for i in range(count))))
    return {"students": count, "think_s": think_s, "duration_s": duration_s,
            **summary(results, time.perf_counter() - began), **memory}


async def closed_loop(app: App, clients: int, duration_s: float, make_text) -> dict:
    results: list[tuple[float, str]] = []
    deadline = time.perf_counter() + duration_s

    async def client(index: int) -> None:
        rng = random.Random(index)
        while time.perf_counter() < deadline:
            results.append(await app.fill_mask(f"closed-{index}", make_text(rng)))  # one session per client

    began = time.perf_counter()
    (_, memory) = await with_memory(app, asyncio.gather(*(client(i) for i in range(clients))))
    return {"clients": clients, "duration_s": duration_s, **summary(results, time.perf_counter() - began), **memory}


async def one_client(app: App, calls: int) -> dict:
    """fill_mask's latency over HTTP for one client alone, each sentence new (no answer from the cache)."""
    rng, results = random.Random(3), []

    async def ask() -> None:
        for number in range(calls):
            results.append(await app.fill_mask("one-client", student_sentence(rng).replace(".", f" {number}.")))

    began = time.perf_counter()
    (_, memory) = await with_memory(app, ask())
    return {"calls": calls, **summary(results, time.perf_counter() - began), **memory}


async def beside(app: App, disturbance) -> tuple[object, dict]:
    """Run `disturbance` while another student asks one question after another (until it ends, plus 1 s)."""
    other: list[tuple[float, str]] = []
    done = asyncio.Event()

    async def other_student() -> None:
        rng = random.Random(7)
        while not done.is_set():
            other.append(await app.fill_mask("other-student", student_sentence(rng)))

    async def then_stop():
        try:
            return await disturbance
        finally:
            await asyncio.sleep(1.0)
            done.set()

    began = time.perf_counter()
    (outcome, _), memory = await with_memory(app, asyncio.gather(then_stop(), other_student()))
    return outcome, {**summary(other, time.perf_counter() - began), **memory}


async def flood(app: App, events: int, patience_s: float = 15.0) -> dict:
    """One session fires `events` at once. Gradio streams a session's results through one message queue, so the
    /call streams of its accepted events can take each other's results and one can be left waiting: such a stream
    counts as an error after `patience_s`."""

    async def one() -> tuple[float, str]:
        try:
            return await asyncio.wait_for(app.fill_mask("flooding-client", "A [MASK] flood."), patience_s)
        except asyncio.TimeoutError:
            return patience_s, "error"

    began = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(events)))
    return {"events": events, "seconds": round(time.perf_counter() - began, 2),
            **{o: sum(1 for _, x in results if x == o) for o in ("ok", "refused", "busy", "error")}}


async def big_text(app: App, megabytes: int) -> dict:
    seconds, outcome = await app.fill_mask("big-text", "word " * (megabytes * 200_000) + "[MASK]")
    return {"megabytes": megabytes, "seconds_to_answer": round(seconds, 2), "outcome": outcome}


async def run_all(args, url: str, models: list[str], pid: int) -> dict:
    app = App(url, models, pid)
    results = {}
    for number in range(20):  # warm-up: new sentences, so the forward pass runs each time
        await app.fill_mask("warm-up", f"A [MASK] warms up {number}.")
    if "students" in args.scenarios:
        results["students"] = await students(app, args.students, args.think_s, args.duration_s, seed=1)
    if "closed_loop" in args.scenarios:
        results["closed_loop"] = await closed_loop(app, args.closed_clients, args.closed_s,
                                                   lambda rng: student_sentence(rng).replace(".", f" {rng.random()}."))
    if "closed_loop_long" in args.scenarios:
        results["closed_loop_long"] = await closed_loop(app, args.long_clients, args.closed_s, long_text)
    if "one_client" in args.scenarios:
        results["one_client"] = await one_client(app, args.one_client_calls)
    if "flood" in args.scenarios:
        outcome, other = await beside(app, flood(app, args.flood_events))
        results["flood"] = {**outcome, "other_student": other}
    if "big_text" in args.scenarios:
        outcome, other = await beside(app, big_text(app, args.big_mb))
        results["big_text"] = {**outcome, "other_student": other}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints-dir", type=Path, default=REPO / "checkpoints")
    parser.add_argument("--students", type=int, default=100)
    parser.add_argument("--think-s", type=float, default=5.0)
    parser.add_argument("--duration-s", type=float, default=90.0, help="length of the students scenario")
    parser.add_argument("--closed-clients", type=int, default=32)
    parser.add_argument("--long-clients", type=int, default=8, help="closed-loop clients sending 500-token texts")
    parser.add_argument("--closed-s", type=float, default=20.0)
    parser.add_argument("--flood-events", type=int, default=300)
    parser.add_argument("--big-mb", type=int, default=40)
    parser.add_argument("--one-client-calls", type=int, default=200)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"some of {','.join(SCENARIOS)}")
    parser.add_argument("--app-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the app (repeatable): the B side of an A/B")
    parser.add_argument("--smoke", action="store_true", help="tiny numbers: checks the script, measures nothing")
    parser.add_argument("--output-stem", type=Path, help="default: a record folder, "
                        "benchmarks/records/<date>_cpu_load-test/load_results")
    args = parser.parse_args()
    args.scenarios = args.scenarios.split(",")
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    app_env = dict(pair.split("=", 1) for pair in args.app_env)
    if args.smoke:
        args.students, args.duration_s, args.closed_clients, args.long_clients = 5, 5.0, 2, 1
        args.closed_s, args.flood_events, args.big_mb, args.think_s = 3.0, 30, 2, 1.0
        args.one_client_calls = 10
    record = REPO / "benchmarks" / "records" / f"{time.strftime('%Y-%m-%d')}_cpu_load-test"
    args.output_stem = args.output_stem or record / "load_results"
    args.output_stem.parent.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HUB_OFFLINE"] = "1"

    from mlm.serve.registry import ModelRegistry

    load_at_start = os.getloadavg()[0]
    models = ModelRegistry(args.checkpoints_dir).names()[:2]
    server, client, first_answer_s = start_app(args.checkpoints_dir, *models, app_env)
    try:
        results = asyncio.run(run_all(args, client.src.rstrip("/") + "/", models, server.pid))
    finally:
        server.terminate()
        server.wait(30)
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "commit": commit(),
               "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()[0],
               "app_env": app_env, "smoke": args.smoke, "models": models,
               "start_to_first_answer_s": round(first_answer_s, 2),
               "command": "HF_HUB_OFFLINE=1 python " + " ".join(sys.argv), **results, "targets": TARGETS}
    args.output_stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.output_stem.with_suffix(".md").write_text(report(results))
    print(report(results))
    return 0


def cpu_per_answer(row: dict) -> str:
    """Server / client CPU milliseconds per answered request (the disturbance's own requests count in the CPU)."""
    answered = max(1, row["ok"] + row["refused"])
    return f"{1000 * row['server_cpu_s'] / answered:.0f} / {1000 * row['client_cpu_s'] / answered:.0f}"


def row(label: str, x: dict) -> str:
    return (f"| {label} | {x.get('p50_ms')} / {x.get('p95_ms')} / {x['max_ms']} | {x['requests_per_s']} | "
            f"{x['ok']} / {x['refused']} / {x['busy']} / {x['error']} | {x['rss_start_mb']} → {x['rss_end_mb']} "
            f"({x['rss_max_mb']}) | {cpu_per_answer(x)} |\n")


def report(r: dict) -> str:
    """The table of the scenarios that ran, and notes on the flood and the big text where they did."""
    rows, notes = "", ""
    if s := r.get("students"):
        rows += row(f"{s['students']} students, think {s['think_s']} s, {s['duration_s']:.0f} s", s)
    if c := r.get("closed_loop"):
        rows += row(f"closed loop, {c['clients']} clients, new sentences", c)
    if cl := r.get("closed_loop_long"):
        rows += row(f"closed loop, {cl['clients']} clients, 500-token 10-mask texts", cl)
    if o := r.get("one_client"):
        rows += row(f"one client alone, {o['calls']} new sentences back to back", o)
    if f := r.get("flood"):
        rows += row(f"another student during a flood of {f['events']} events from one client", f["other_student"])
        notes += (f"The flooding client: {f['ok']} events answered, {f['busy']} told \"busy\" (HTTP 503), "
                  f"{f['error']} errors (accepted events whose\n/call stream was still waiting after 15 s: Gradio "
                  f"streams a session's results through one queue, and the flooder's\nstreams take each other's), "
                  f"in {f['seconds']} s.\n")
    if b := r.get("big_text"):
        rows += row(f"another student while one request carries {b['megabytes']} MB of text", b["other_student"])
        notes += (f"The {b['megabytes']} MB text: answered `{b['outcome']}` (a message for the user) in "
                  f"{b['seconds_to_answer']} s.\n")
    settings = f" App environment: {r['app_env']}." if r.get("app_env") else ""
    return f"""# Load benchmark: a lecture hall and its worst visitor

Machine: {r['machine']} ({r['date']}; 1-minute load average {r['load_average_at_start']:.2f} at the start, \
{r['load_average_at_end']:.2f} at the end{'; SMOKE RUN, not a measurement' if r['smoke'] else ''}). Commit: {r['commit']}.
Models: {' and '.join(f'`{m}`' for m in r['models'])}, both per call, top-{TOP_K}. Clients in a separate process from the
app, each a session of its own speaking Gradio's HTTP protocol (a minimal asyncio client: it shares the cores with the
server, see the last column). Command: `{r['command']}`.{settings}

| scenario | p50 / p95 / max ms | answered/s | ok / refused / busy / errors | server RSS start → end (max) MB | CPU ms per answer, server / clients |
| --- | --- | --- | --- | --- | --- |
{rows}
{notes}Target: {TARGETS['students_p95_ms']} ms p95 and {TARGETS['students_errors']} errors for the students.
"""

if __name__ == "__main__":
    sys.exit(main())
