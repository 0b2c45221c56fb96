"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.deps import ContextDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The store and Ray are reachable")
async def readyz(ctx: ContextDep) -> JSONResponse:
    def check() -> dict[str, bool]:
        try:
            ctx.store.ping()
            store = True
        except Exception:
            store = False
        return {"store": store, "ray": ctx.ray.ping()}

    checks = await run_in_threadpool(check)
    ok = all(checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", **checks}, status_code=200 if ok else 503)
