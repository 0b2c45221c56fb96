"""Dependencies as Annotated aliases, so handlers read like prose and tests can override them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.studies import Context
from service.store import LOCAL_OWNER


class Unauthorized(PermissionError):
    pass


async def get_context(request: Request) -> Context:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a hop per request for a lookup
    return request.app.state.ctx  # type: ignore[no-any-return]


ContextDep = Annotated[Context, Depends(get_context)]
_bearer = HTTPBearer(auto_error=False, description="An API token from `caviar token create --owner NAME`.")


async def current_owner(request: Request, ctx: ContextDep,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The owner of the request's bearer token. Without an Authorization header: the owner 'local'
    when auth is optional (the API listens on loopback only), else 401. A wrong or revoked token, and
    an Authorization header that is not ``Bearer <token>``, are always 401."""
    if credentials is None and "authorization" in request.headers:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    if credentials is None:
        if ctx.settings.auth == "required":
            raise Unauthorized("this endpoint needs a bearer token (Authorization: Bearer <token>); create one with `caviar token create --owner NAME`")
        return LOCAL_OWNER
    owner = await run_in_threadpool(ctx.store.tokens.owner_for, credentials.credentials)
    if owner is None:
        raise Unauthorized("the bearer token is unknown or revoked")
    return owner


OwnerDep = Annotated[str, Depends(current_owner)]
