"""Bounds on what waits for the server, so one visitor cannot stall a public Space for the others.

Gradio's queue bounds its total length (`max_size`), but one client could fill it alone: 300 events queued in
2.4 s made the next student wait 144 s. `limit_per_session` refuses, at the door (before an event is queued), any
event from a session that already has `per_session` events pending; the flooding client gets HTTP 503 with
BUSY_MESSAGE at once, and everyone else keeps their place. Callers of the plain HTTP API (`/call/...`) send no
session, so all of them share one allowance of the same size.

It wraps `Queue.push` and reads `Queue.pending_event_ids_session` (Gradio 6 internals: tests/test_serving.py checks
the behaviour end to end, so an upgrade that changes them fails there).
"""

from __future__ import annotations

import gradio as gr
from starlette.responses import JSONResponse

BUSY_MESSAGE = "The app is busy: try again in a moment."
TOO_LARGE_MESSAGE = "The request is too large: a sentence may have at most 5,000 characters."
MAX_BODY_BYTES = 1_000_000  # 5,000 characters are at most 60 kB of JSON, even as unicode escapes


class BodyLimit:
    """ASGI middleware: refuse a request body over `max_bytes` before anything reads it, so a 40 MB text costs the
    server no JSON parsing and no memory. File uploads are left to Gradio's own `max_file_size`."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"detail": TOO_LARGE_MESSAGE}, status_code=413)(scope, receive, send)
        received = 0

        async def receive_within_limit():  # a body sent without its length is counted as it arrives
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise ValueError(TOO_LARGE_MESSAGE)
            return message

        return await self.app(scope, receive_within_limit, send)


def set_concurrency(demo: gr.Blocks, concurrency_id: str, limit: int) -> None:
    """Let `limit` events of one concurrency group run at once (Gradio takes the lowest limit among the group's
    events, so every one of them is set; the tabs name the group, the server decides its size)."""
    for fn in demo.fns.values():
        if fn.concurrency_id == concurrency_id:
            fn.concurrency_limit = limit


def limit_per_session(demo: gr.Blocks, per_session: int) -> None:
    """Refuse events beyond `per_session` pending ones per session (after `demo.queue()`); a full queue answers
    BUSY_MESSAGE too, instead of Gradio's message with its internal sizes."""
    queue = demo._queue
    push = queue.push
    sessionless: set[str] = set()  # event ids of callers without a session, still pending

    async def push_within_limits(body, request, username):
        pending = queue.pending_event_ids_session
        if body.session_hash is None:
            sessionless.intersection_update(pending)  # such an event's id is its own session while it is pending
            held = len(sessionless)
        else:
            held = len(pending.get(body.session_hash, ()))
        if held >= per_session:
            return False, BUSY_MESSAGE, "queue_full"
        anonymous = body.session_hash is None
        success, event_id, state = await push(body, request, username)
        if state == "queue_full":
            return False, BUSY_MESSAGE, state
        if success and anonymous:
            sessionless.add(event_id)
        return success, event_id, state

    queue.push = push_within_limits


class _ConfigsOnDemand(dict):
    """A session's component configurations, each computed when first needed instead of all 230 when the session
    starts. Gradio reads the whole set only to rebuild a page from a deep link (`SessionState.components`, through
    items()); its other uses ask for one component and compute it themselves when it is missing."""

    def __init__(self, session, blocks):
        super().__init__()
        self._session, self._blocks = session, blocks

    def _complete(self) -> None:
        for key, block in self._session.blocks_config.blocks.items():
            if key in self._blocks.blocks and not super().__contains__(key):
                super().__setitem__(key, self._session.blocks_config.config_for_block(key, [], block))

    def items(self):
        self._complete()
        return super().items()

    def values(self):
        self._complete()
        return super().values()

    def keys(self):
        self._complete()
        return super().keys()

    def __iter__(self):
        self._complete()
        return super().__iter__()

    def __len__(self) -> int:
        self._complete()
        return super().__len__()


class _NoBlocks:
    """`blocks` as SessionState's constructor sees it: the real default config, no components to configure."""

    def __init__(self, blocks):
        self.default_config, self.blocks = blocks.default_config, {}


def cheap_sessions() -> None:
    """Start Gradio sessions without configuring every component up front. Gradio 6 builds, for each new session,
    the configuration of every component of the page (30 ms and 0.35 MB here); 100 students arriving within 5 s
    held the event loop for 3 s and their first answers waited seconds. Gradio 6 internals (`SessionState`, read by
    `StateHolder`): tests/test_serving.py checks the configurations are the same, so an upgrade that changes them
    fails there."""
    from gradio import state_holder

    base = state_holder.SessionState
    if getattr(base, "configs_on_demand", False):
        return

    class SessionState(base):
        configs_on_demand = True

        def __init__(self, blocks):
            super().__init__(_NoBlocks(blocks))
            self.config_values = _ConfigsOnDemand(self, blocks)

    state_holder.SessionState = SessionState
