"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from service.api.studies import Conflict, InFlight, KeyReused, NotFound, QuotaExceeded
from service.definition import DefinitionError
from trainables import DATASET_NAMES

log = logging.getLogger("caviar.api")
PROBLEM = "application/problem+json"
PROBLEM_CONTENT: dict[str, Any] = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked bearer token", "content": PROBLEM_CONTENT},
    404: {"description": "Unknown study or trial (or another owner's)", "content": PROBLEM_CONTENT},
    413: {"description": "Body over 1 MiB, or a YAML body of more than 100,000 nodes", "content": PROBLEM_CONTENT},
    422: {"description": "Invalid input: problem details naming the field and the rule", "content": PROBLEM_CONTENT},
    429: {"description": "The owner's quota of active studies or concurrent trials is used up", "content": PROBLEM_CONTENT},
    503: {"description": "The store is busy; retry after Retry-After seconds", "content": PROBLEM_CONTENT},
}


def problem(status: int, title: str, detail: str, *, field: str | None = None, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": f"https://caviar.dev/problems/{title.lower().replace(' ', '-')}", "title": title, "status": status, "detail": detail}
    if field is not None:
        body["field"] = field
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    # drop FastAPI's "body" prefix and pydantic's union tags; keep the path a user wrote
    parts = [str(p) for p in loc if p not in ("body",) and not str(p).startswith("function-")]
    if len(parts) >= 2 and parts[0] == "dataset" and parts[1] in DATASET_NAMES:  # the union's tag, not a field
        del parts[1]
    return ".".join(parts) or "body"  # the body itself (not a mapping, not JSON)


def validation_problem(errors: list[dict[str, Any]]) -> JSONResponse:
    items = [{"field": _loc(e["loc"]), "message": e["msg"].removeprefix("Value error, ")} for e in errors]
    first = items[0]
    return problem(422, "Invalid definition", f"{first['field']}: {first['message']}", field=first["field"], errors=items)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(list(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _invalid(_: Request, exc: ValidationError) -> JSONResponse:
        return validation_problem(exc.errors(include_url=False))  # type: ignore[arg-type]

    @app.exception_handler(DefinitionError)
    async def _definition(_: Request, exc: DefinitionError) -> JSONResponse:
        return problem(422, "Invalid definition", str(exc), field=exc.field, errors=[{"field": exc.field, "message": exc.rule}])

    from service.api.deps import Unauthorized  # deps imports this module's neighbours; import late

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return problem(401, "Unauthorized", str(exc), field="Authorization", headers={"WWW-Authenticate": 'Bearer realm="caviar"'})

    @app.exception_handler(KeyReused)
    async def _key_reused(_: Request, exc: KeyReused) -> JSONResponse:
        return problem(422, "Idempotency key reused", str(exc), field="Idempotency-Key",
                       errors=[{"field": "Idempotency-Key", "message": "a key identifies one body; use a new key for a different definition"}])

    @app.exception_handler(InFlight)
    async def _in_flight(_: Request, exc: InFlight) -> JSONResponse:
        return problem(409, "Request in flight", str(exc), field="Idempotency-Key", headers={"Retry-After": "1"})

    @app.exception_handler(QuotaExceeded)
    async def _quota(_: Request, exc: QuotaExceeded) -> JSONResponse:
        return problem(429, "Quota exceeded", str(exc), headers={"Retry-After": "60"})

    @app.exception_handler(OperationalError)
    async def _store_busy(_: Request, exc: OperationalError) -> JSONResponse:
        log.error("store unavailable: %s", exc.orig)
        return problem(503, "Store unavailable", "the database is busy or unreachable; retry shortly", headers={"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem(500, "Internal error", f"{type(exc).__name__}; the server log has the details")

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return problem(404, "Not found", str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return problem(409, "Conflict", str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):  # FastAPI: a body that is not JSON
            return problem(422, "Invalid body", "the body is not valid JSON (or not UTF-8)", field="body")
        title = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}.get(exc.status_code, str(exc.detail))
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:  # every method the path takes, not only the first route's
            headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
        return problem(exc.status_code, title, str(exc.detail), headers=headers or None)


def allowed_methods(request: Request) -> list[str]:
    """The methods the request's path takes, from the app's OpenAPI paths (routers may nest routes)."""
    from starlette.routing import compile_path

    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {m.upper() for m in operations if m.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE")}
    if "GET" in methods:
        methods.add("HEAD")  # Starlette answers HEAD wherever GET is served
    return sorted(methods)
