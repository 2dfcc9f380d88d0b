"""A lecture hall and its worst visitor, against the real app: many students at once, the closed-loop ceiling, a
flood from one client and a 40 MB text, each with the latency another student sees meanwhile.

    HF_HUB_OFFLINE=1 python benchmarks/bench_load.py              # the full run (about 4 minutes, quiet machine)
    HF_HUB_OFFLINE=1 python benchmarks/bench_load.py --smoke --output-stem /tmp/load   # a quick check of the script

The app runs as `python app.py` in its own process; the clients run here, in this process, as a class's browsers
would: each student is a session of its own speaking Gradio's HTTP protocol (POST /gradio_api/call/fill_mask, then
the result's event stream), both default models per call, top-5. Scenarios:
  * students: N students, each asking, reading the answer, thinking ~T s (uniform 0.5T-1.5T), asking again; most
    sentences are their own (templates with random words), a quarter are the tab's examples;
  * closed loop: C clients (a session each) asking back to back with sentences never seen before (no answer
    cache): the ceiling in requests/s; the same with 500-token, 10-mask texts;
  * flood: one session fires F events at once while another student asks one question after another;
  * big text: one request carrying a 40 MB text while another student asks one question after another.
The server's resident memory is sampled throughout, and the CPU seconds of the server and of the clients are counted
per scenario (from /proc). Writes <output-stem>.json and .md (default
benchmarks/load_results.*).
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

from bench_app import machine, percentiles, start_app

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Imported once here: imported at a student's first question, it would stall every client for seconds.
from mlm.ui.compare_tab import EXAMPLES  # noqa: E402

TOP_K = 5
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


class App:
    """The running app seen from a client: one call is one Gradio event of its session.

    The HTTP is written by hand on asyncio streams (one connection per request, `Connection: close`): the clients
    share the 2 cores with the server, and this costs them a fraction of httpx's CPU per request (each scenario
    reports the clients' CPU per request next to the server's, so the split is visible)."""

    def __init__(self, url: str, models: list[str], pid: int):
        self.models, self.pid = models, pid
        address = url.split("//", 1)[1].split("/", 1)[0]
        self.host, self.port = address.rsplit(":", 1)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body) of one HTTP/1.1 request; a chunked body is joined."""
        reader, writer = await asyncio.open_connection(self.host, int(self.port))
        try:
            head = f"{method} /{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nConnection: close\r\n"
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            # As curl does for a body over 1 MB: ask first, so a server that refuses it answers before the upload
            # (otherwise its answer is lost in the reset of a connection closed while the body still arrives).
            ask_first = body is not None and len(body) > 1_000_000
            writer.write(head.encode() + (b"Expect: 100-continue\r\n\r\n" if ask_first else b"\r\n" + (body or b"")))
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            status = int(head.split(" ", 2)[1])
            if ask_first and status == 100:
                writer.write(body)
                await writer.drain()
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                status = int(head.split(" ", 2)[1])
            headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
            if headers.get("transfer-encoding") == "chunked":
                chunks = []
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    chunks.append(await reader.readexactly(size + 2))
                return status, b"".join(chunk[:-2] for chunk in chunks)
            return status, await reader.readexactly(int(headers.get("content-length", 0)))
        finally:
            writer.close()

    async def fill_mask(self, session: str, text: str) -> tuple[float, str]:
        """(seconds, outcome): 'ok' (both models answered), 'refused' (a message for the user, or 413), 'busy'
        (503), 'error' (anything else)."""
        began = time.perf_counter()
        try:
            body = json.dumps({"data": [text, TOP_K, *self.models], "session_hash": session}).encode()
            status, posted = await self.request("POST", "gradio_api/call/fill_mask", body)
            if status in (413, 503):  # too large to be read; busy
                return time.perf_counter() - began, "refused" if status == 413 else "busy"
            if status != 200:
                return time.perf_counter() - began, "error"
            event_id = json.loads(posted)["event_id"]
            _, stream = await self.request("GET", f"gradio_api/call/fill_mask/{event_id}")
            event = None
            for line in stream.decode().splitlines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    outcome = "error"
                    if event == "complete":
                        [answer] = json.loads(line.split(":", 1)[1])
                        sides = [answer["left"], answer["right"]]
                        outcome = "ok" if all("masks" in s for s in sides) else "refused"
                    return time.perf_counter() - began, outcome
        except (OSError, ValueError, KeyError, IndexError, asyncio.IncompleteReadError):
            pass
        return time.perf_counter() - began, "error"

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024

    def cpu_s(self) -> float:
        """The server process's CPU seconds so far (user + system, all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sample_memory(app: App, samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(app.rss_mb())
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


def summary(results: list[tuple[float, str]], seconds: float) -> dict:
    counts = {outcome: sum(1 for _, o in results if o == outcome) for outcome in ("ok", "refused", "busy", "error")}
    answered = [s for s, o in results if o in ("ok", "refused")]
    return {**(percentiles(answered) if answered else {"runs": 0}), "max_ms": round(1000 * max(answered, default=0), 1),
            "requests_per_s": round(len(answered) / seconds, 2), **counts}


async def with_memory(app: App, work) -> tuple[object, dict]:
    """`work`'s result, and the server's memory and the CPU seconds of both processes meanwhile."""
    samples, stop = [], asyncio.Event()
    server_cpu, client_cpu = app.cpu_s(), time.process_time()
    sampler = asyncio.create_task(sample_memory(app, samples, stop))
    result = await work
    stop.set()
    await sampler
    samples.append(app.rss_mb())
    return result, {"rss_start_mb": round(samples[0], 1), "rss_end_mb": round(samples[-1], 1),
                    "rss_max_mb": round(max(samples), 1), "server_cpu_s": round(app.cpu_s() - server_cpu, 2),
                    "client_cpu_s": round(time.process_time() - client_cpu, 2)}


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
    results["students"] = await students(app, args.students, args.think_s, args.duration_s, seed=1)
    results["closed_loop"] = await closed_loop(app, args.closed_clients, args.closed_s,
                                               lambda rng: student_sentence(rng).replace(".", f" {rng.random()}."))
    results["closed_loop_long"] = await closed_loop(app, args.long_clients, args.closed_s, long_text)
    outcome, other = await beside(app, flood(app, args.flood_events))
    results["flood"] = {**outcome, "other_student": other}
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
    parser.add_argument("--smoke", action="store_true", help="tiny numbers: checks the script, measures nothing")
    parser.add_argument("--output-stem", type=Path, default=REPO / "benchmarks" / "load_results")
    args = parser.parse_args()
    if args.smoke:
        args.students, args.duration_s, args.closed_clients, args.long_clients = 5, 5.0, 2, 1
        args.closed_s, args.flood_events, args.big_mb, args.think_s = 3.0, 30, 2, 1.0
    os.environ["HF_HUB_OFFLINE"] = "1"

    from mlm.serve.registry import ModelRegistry

    load_at_start = os.getloadavg()[0]
    models = ModelRegistry(args.checkpoints_dir).names()[:2]
    server, client, first_answer_s = start_app(args.checkpoints_dir, *models)
    try:
        results = asyncio.run(run_all(args, client.src.rstrip("/") + "/", models, server.pid))
    finally:
        server.terminate()
        server.wait(30)
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "load_average_at_start": load_at_start,
               "smoke": args.smoke, "models": models, "start_to_first_answer_s": round(first_answer_s, 2),
               "command": "HF_HUB_OFFLINE=1 python " + " ".join(sys.argv), **results, "targets": TARGETS}
    args.output_stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.output_stem.with_suffix(".md").write_text(report(results))
    print(report(results))
    return 0


def cpu_per_answer(row: dict) -> str:
    """Server / client CPU milliseconds per answered request (the disturbance's own requests count in the CPU)."""
    answered = max(1, row["ok"] + row["refused"])
    return f"{1000 * row['server_cpu_s'] / answered:.0f} / {1000 * row['client_cpu_s'] / answered:.0f}"


def report(r: dict) -> str:
    s, c, cl, f, b = r["students"], r["closed_loop"], r["closed_loop_long"], r["flood"], r["big_text"]
    fo, bo = f["other_student"], b["other_student"]
    return f"""# Load benchmark: a lecture hall and its worst visitor

Machine: {r['machine']} ({r['date']}; 1-minute load average {r['load_average_at_start']:.2f} at the start{'; SMOKE RUN, not a measurement' if r['smoke'] else ''}).
Models: {' and '.join(f'`{m}`' for m in r['models'])}, both per call, top-{TOP_K}. Clients in a separate process from the
app, each a session of its own speaking Gradio's HTTP protocol (a minimal asyncio client: it shares the cores with the
server, see the last column). Command: `{r['command']}`.

| scenario | p50 / p95 / max ms | answered/s | ok / refused / busy / errors | server RSS start → end (max) MB | CPU ms per answer, server / clients |
| --- | --- | --- | --- | --- | --- |
| {s['students']} students, think {s['think_s']} s, {s['duration_s']:.0f} s | {s.get('p50_ms')} / {s.get('p95_ms')} / {s['max_ms']} | {s['requests_per_s']} | {s['ok']} / {s['refused']} / {s['busy']} / {s['error']} | {s['rss_start_mb']} → {s['rss_end_mb']} ({s['rss_max_mb']}) | {cpu_per_answer(s)} |
| closed loop, {c['clients']} clients, new sentences | {c.get('p50_ms')} / {c.get('p95_ms')} / {c['max_ms']} | {c['requests_per_s']} | {c['ok']} / {c['refused']} / {c['busy']} / {c['error']} | {c['rss_start_mb']} → {c['rss_end_mb']} ({c['rss_max_mb']}) | {cpu_per_answer(c)} |
| closed loop, {cl['clients']} clients, 500-token 10-mask texts | {cl.get('p50_ms')} / {cl.get('p95_ms')} / {cl['max_ms']} | {cl['requests_per_s']} | {cl['ok']} / {cl['refused']} / {cl['busy']} / {cl['error']} | {cl['rss_start_mb']} → {cl['rss_end_mb']} ({cl['rss_max_mb']}) | {cpu_per_answer(cl)} |
| another student during a flood of {f['events']} events from one client | {fo.get('p50_ms')} / {fo.get('p95_ms')} / {fo['max_ms']} | {fo['requests_per_s']} | {fo['ok']} / {fo['refused']} / {fo['busy']} / {fo['error']} | {fo['rss_start_mb']} → {fo['rss_end_mb']} ({fo['rss_max_mb']}) | {cpu_per_answer(fo)} |
| another student while one request carries {b['megabytes']} MB of text | {bo.get('p50_ms')} / {bo.get('p95_ms')} / {bo['max_ms']} | {bo['requests_per_s']} | {bo['ok']} / {bo['refused']} / {bo['busy']} / {bo['error']} | {bo['rss_start_mb']} → {bo['rss_end_mb']} ({bo['rss_max_mb']}) | {cpu_per_answer(bo)} |

The flooding client: {f['ok']} events answered, {f['busy']} told "busy" (HTTP 503), {f['error']} errors (accepted events whose
/call stream was still waiting after 15 s: Gradio streams a session's results through one queue, and the flooder's
streams take each other's), in {f['seconds']} s.
The {b['megabytes']} MB text: answered `{b['outcome']}` (a message for the user) in {b['seconds_to_answer']} s.
Target: {TARGETS['students_p95_ms']} ms p95 and {TARGETS['students_errors']} errors for the students.
"""


if __name__ == "__main__":
    sys.exit(main())
