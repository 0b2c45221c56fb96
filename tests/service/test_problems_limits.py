"""Problem details and the request limits, on a minimal app (no store, no Ray)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request

from service.api import problems
from service.api.limits import Limits
from service.definition import DefinitionError
from tests.service.fakes import serve_in_thread


async def _guard(authorization: str) -> bool:
    return authorization == "Bearer good"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    app = FastAPI()
    app.add_middleware(Limits, max_body=1000, guard_docs=_guard)
    problems.install(app)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.get("/definition")
    async def definition() -> None:
        raise DefinitionError("search_space.lr", "low must be < high")

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals")

    @app.get("/items/{n}")
    async def item(n: int) -> dict[str, int]:
        return {"n": n}

    with serve_in_thread(app) as base:
        yield base


def test_a_definition_error_is_a_422_naming_the_field(url: str) -> None:
    r = httpx.get(f"{url}/definition")
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json() == {"type": "https://caviar.dev/problems/invalid-definition", "title": "Invalid definition", "status": 422,
                        "detail": "search_space.lr: low must be < high", "field": "search_space.lr",
                        "errors": [{"field": "search_space.lr", "message": "low must be < high"}]}


def test_request_validation_names_the_parameter_and_internals_stay_in_the_log(url: str) -> None:
    r = httpx.get(f"{url}/items/abc")
    assert r.status_code == 422 and r.json()["field"] == "path.n"
    crash = httpx.get(f"{url}/crash")
    assert crash.status_code == 500 and crash.json()["detail"] == "RuntimeError; the server log has the details"
    assert "secret" not in crash.text
    assert httpx.get(f"{url}/nowhere").json()["title"] == "Not found"


def test_bodies_over_the_limit_are_413_whether_announced_or_streamed(url: str) -> None:
    assert httpx.post(f"{url}/echo", content=b"x" * 1000).json() == {"bytes": 1000}
    announced = httpx.post(f"{url}/echo", content=b"x" * 1001)
    assert announced.status_code == 413 and "the limit is 1000" in announced.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"x" * 400

    streamed = httpx.post(f"{url}/echo", content=chunks())
    assert streamed.status_code == 413 and streamed.headers["content-type"] == "application/problem+json"


def test_the_openapi_document_needs_a_token_when_the_guard_is_on(url: str) -> None:
    r = httpx.get(f"{url}/openapi.json")
    assert r.status_code == 401 and r.json()["field"] == "Authorization" and r.headers["WWW-Authenticate"].startswith("Bearer")
    ok = httpx.get(f"{url}/openapi.json", headers={"Authorization": "Bearer good"})
    assert ok.status_code == 200 and "/echo" in json.loads(ok.text)["paths"]
