"""Request limits enforced before a handler sees the request, as a plain ASGI middleware.

- Bodies over ``max_body`` bytes get 413: at once when Content-Length says so, else while
  streaming (the body is never read past the limit).
- When auth is required, the OpenAPI document and the docs pages need a bearer token too
  (every endpoint but /healthz does; routes check theirs with ``service.api.deps.current_owner``).
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import problem

MAX_BODY = 1 << 20
DOC_PATHS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


class Limits:
    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY, guard_docs: Any = None) -> None:
        self.app, self.max_body, self.guard_docs = app, max_body, guard_docs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await problem(413, "Payload too large", f"the body has {length.decode(errors='replace')} bytes; the limit is {self.max_body}")(scope, receive, send)
            return
        if self.guard_docs is not None and scope["path"] in DOC_PATHS and not await self.guard_docs(headers.get(b"authorization", b"").decode(errors="replace")):
            await problem(401, "Unauthorized", "the API documentation needs a bearer token too when the server is not on loopback",
                          field="Authorization", headers={"WWW-Authenticate": 'Bearer realm="caviar"'})(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # chunked upload past the limit: stop reading
                    raise HTTPException(413, f"the body is over the limit of {self.max_body} bytes")
            return message

        await self.app(scope, limited, send)
