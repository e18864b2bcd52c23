"""Limits that protect the service before a request reaches a route: body size and request rate.

Both are ASGI middlewares and answer with OpenAI error objects. The body cap reads at most
``max_bytes`` (a declared ``Content-Length`` over it is refused before anything is read) and hands the
route the body it buffered. The rate limit is a token bucket per API key (per client address when no key
is sent): ``per_minute`` requests a minute, bursts up to the same number, 429 with ``Retry-After``.
"""

import math
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_body


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is over this server's limit of {self.max_bytes} bytes"
        await JSONResponse(error_body(413, message, code="body_too_large"), 413)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending everything
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the client's disconnect, as usual

        await self.app(scope, replay, send)


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, per_minute: int, clock=time.monotonic):
        self.app, self.rate, self.clock = app, per_minute / 60.0, clock
        self.capacity = float(per_minute)
        self.buckets: dict[bytes, tuple[float, float]] = {}  # client → (tokens, when counted)

    def _client(self, scope: Scope) -> bytes:
        key = dict(scope["headers"]).get(b"authorization")
        return key or (scope.get("client") or ("unknown",))[0].encode()

    def _take(self, client: bytes) -> float:
        """Take a token; 0 when granted, else the seconds until one is there."""
        now = self.clock()
        if len(self.buckets) > 100_000:  # forget idle clients: a full bucket grants like a new one
            self.buckets = {c: (t, w) for c, (t, w) in self.buckets.items() if now - w < 60}
        tokens, then = self.buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate)
        if tokens >= 1:
            self.buckets[client] = (tokens - 1, now)
            return 0.0
        self.buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            wait = self._take(self._client(scope))
            if wait > 0:
                body = error_body(429, "rate limit reached: slow down", code="rate_limit_exceeded")
                headers = {"Retry-After": str(math.ceil(wait))}
                await JSONResponse(body, 429, headers=headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
