"""Liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import ContextDep, current_owner
from service.api.metrics import exposition
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


@router.get(
    "/metrics", summary="Prometheus metrics: studies, trials, results, durations, HTTP requests",
    dependencies=[Depends(current_owner)], response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: ERRORS[401]},
    description="Prometheus text format. Beyond loopback it needs an API token, like every endpoint: give Prometheus "
    "one (`authorization: {credentials_file: ...}` in its scrape config). Service-wide: no per-trial or per-study labels.",
)
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(exposition, request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
