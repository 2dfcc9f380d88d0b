"""A request body over the limit is refused before anything reads it, so a 40 MB text costs the server no JSON
parsing and no memory (ASGI middleware, in front of Gradio: it changes nothing of Gradio itself)."""

from __future__ import annotations

from starlette.responses import JSONResponse

TOO_LARGE_MESSAGE = "The request is too large: a sentence may have at most 5,000 characters."
MAX_BODY_BYTES = 1_000_000  # 5,000 characters are at most 60 kB of JSON, even as unicode escapes


class BodyLimit:
    """ASGI middleware: refuse a request body over `max_bytes` (HTTP 413). File uploads are left to Gradio's own
    `max_file_size`."""

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
