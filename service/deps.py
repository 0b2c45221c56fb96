"""Dependencies as Annotated aliases, so handlers read like prose and tests can override them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.studies import Context


def get_context(request: Request) -> Context:
    return request.app.state.ctx  # type: ignore[no-any-return]


ContextDep = Annotated[Context, Depends(get_context)]
