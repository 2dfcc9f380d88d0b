"""The load benchmark's client side (benchmarks/bench_load.py): the running app as its students' browsers see it,
one Gradio event per call over a hand-written HTTP client, and the server process's memory and CPU meanwhile."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from bench_app import percentiles

TOP_K = 5


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
