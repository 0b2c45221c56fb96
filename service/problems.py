"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from service.schemas import DefinitionError
from service.studies import Conflict, NotFound

PROBLEM = "application/problem+json"


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
    return ".".join(parts)


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

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return problem(404, "Not found", str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return problem(409, "Conflict", str(exc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail) if exc.status_code != 404 else "Not found", str(exc.detail))
