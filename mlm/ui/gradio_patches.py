"""Every change this app makes to Gradio, in one place, checked against the Gradio version it was written for.

Three changes, each reaching into Gradio internals (private attributes, a class replaced for the whole process):
  * `set_concurrency`: the size of a concurrency group, set on every event of the group (`Blocks.fns`);
  * `limit_per_session`: a session may hold at most N pending events (it wraps `Queue.push`), so one visitor cannot
    fill the queue that a whole class shares;
  * `cheap_sessions`: a new session configures its components on demand instead of all of them up front
    (`gradio.state_holder.SessionState`, replaced for the process).
tests/integration/test_serving.py checks each one's behaviour end to end.

They were written for GRADIO_VERSIONS (the range requirements.txt allows). Outside it, applying any of them raises
UnsupportedGradio, at start-up, rather than skipping the patch with a warning: the app serves a public Space, and
a skipped `limit_per_session` would leave it open to a flood with nothing but a log line nobody reads, while a
patch applied to internals that changed may fail on every event, or silently do something else. Whoever upgrades
Gradio re-reads this module and its tests against the new version, then widens the range here and in
requirements.txt together.

`patch_gradio` applies all three, once, from the app's start-up (after `demo.queue()`, before `demo.launch()`);
nothing happens at import.
"""

from __future__ import annotations

import gradio as gr
from packaging.specifiers import SpecifierSet
from packaging.version import Version

GRADIO_VERSIONS = SpecifierSet(">=6.0,<7")
BUSY_MESSAGE = "The app is busy: try again in a moment."


class UnsupportedGradio(RuntimeError):
    pass


def check_gradio_version(version: str | None = None) -> None:
    """UnsupportedGradio unless `version` (default: the installed Gradio's) is one these patches were written for."""
    version = gr.__version__ if version is None else version
    if Version(version) not in GRADIO_VERSIONS:
        raise UnsupportedGradio(
            f"mlm/ui/gradio_patches.py was written for gradio{GRADIO_VERSIONS}, and gradio {version} is installed: "
            f"install a version in that range (pip install 'gradio{GRADIO_VERSIONS}'), or check the patches against "
            f"gradio {version} and widen GRADIO_VERSIONS.")


def patch_gradio(demo: gr.Blocks, concurrency: dict[str, int], events_per_session: int) -> None:
    """Apply every patch of this module to `demo` and the process: the concurrency groups' sizes, the per-session
    limit and the cheap sessions. Call once, after `demo.queue()` (which makes the queue it wraps) and before
    `demo.launch()`."""
    check_gradio_version()
    for concurrency_id, limit in concurrency.items():
        set_concurrency(demo, concurrency_id, limit)
    limit_per_session(demo, events_per_session)
    cheap_sessions()


def set_concurrency(demo: gr.Blocks, concurrency_id: str, limit: int) -> None:
    """Let `limit` events of one concurrency group run at once (Gradio takes the lowest limit among the group's
    events, so every one of them is set; the tabs name the group, the server decides its size)."""
    check_gradio_version()
    for fn in demo.fns.values():
        if fn.concurrency_id == concurrency_id:
            fn.concurrency_limit = limit


def limit_per_session(demo: gr.Blocks, per_session: int) -> None:
    """Refuse, at the door (before an event is queued), any event from a session that already has `per_session`
    events pending: the flooding client gets HTTP 503 with BUSY_MESSAGE at once, and everyone else keeps their
    place (Gradio's queue bounds only its total length, which one client could fill alone). Callers of the plain
    HTTP API (`/call/...`) send no session, so all of them share one allowance of the same size. A full queue
    answers BUSY_MESSAGE too, instead of Gradio's message with its internal sizes. Wraps `Queue.push` and reads
    `Queue.pending_event_ids_session`; call after `demo.queue()`."""
    check_gradio_version()
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
    """A session's component configurations, each computed when first needed instead of all of them when the
    session starts. Gradio reads the whole set only to rebuild a page from a deep link (`SessionState.components`,
    through items()); its other uses ask for one component and compute it themselves when it is missing."""

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
    """Start Gradio sessions without configuring every component up front: Gradio 6 builds, for each new session,
    the configuration of every component of the page (230 here), which held the event loop while a class arrived
    at once (the load benchmark's record, benchmarks/bench_load.py, measures the app with it). Replaces
    `gradio.state_holder.SessionState`, which `StateHolder` instantiates, for the whole process; a second call
    changes nothing."""
    check_gradio_version()
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
