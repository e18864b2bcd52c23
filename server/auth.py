"""Optional API keys: with ``T2L_API_KEYS`` set, every ``/v1`` route (and ``/metrics``, unless
``T2L_METRICS_PUBLIC``) needs ``Authorization: Bearer <key>``.

A middleware, so an unauthenticated request is refused before its body is read or validated.
Keys are compared in constant time, against every key, so timing reveals neither a key nor its position.
"""

import hmac

from pydantic import SecretStr
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_body


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[SecretStr], metrics_public: bool = False):
        self.app = app
        self.keys = [key.get_secret_value().encode() for key in keys]
        self.metrics_public = metrics_public

    def _guarded(self, path: str) -> bool:
        return path.startswith("/v1") or (path == "/metrics" and not self.metrics_public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and self._guarded(scope["path"]):
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            matches = [hmac.compare_digest(token.strip(), key) for key in self.keys]
            if scheme.lower() != b"bearer" or not any(matches):
                body = error_body(
                    401,
                    "missing or invalid API key: send Authorization: Bearer <key>",
                    code="invalid_api_key",
                )
                await JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)
