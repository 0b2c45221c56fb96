"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.api.deps import ContextDep, current_owner
from service.api.problems import ERRORS

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz", summary="The store and Ray are reachable, and the server is not shutting down",
    dependencies=[Depends(current_owner)],
    responses={401: ERRORS[401], 503: {"description": "Not ready: store or Ray unreachable, or draining after SIGTERM"}},
)
async def readyz(request: Request, ctx: ContextDep) -> JSONResponse:
    if getattr(request.app.state, "draining", False):
        return JSONResponse({"status": "draining", "store": None, "ray": None}, status_code=503)

    def check() -> dict[str, bool]:
        try:
            ctx.store.ping()
            store = True
        except Exception:
            store = False
        return {"store": store, "ray": ctx.jobs.ping()}

    checks = await run_in_threadpool(check)
    ok = all(checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", **checks}, status_code=200 if ok else 503)
