"""service.client.Client against scripted HTTP answers (httpx.MockTransport): retries, errors."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from service.client import CaviarError, Client

PROBLEM = {"content-type": "application/problem+json"}


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


def busy() -> httpx.Response:
    return httpx.Response(503, headers={**PROBLEM, "Retry-After": "0"}, json={"title": "Store unavailable", "status": 503, "detail": "busy"})


def client(transport: httpx.MockTransport, **kw: float) -> Client:
    return Client("http://caviar.test", token="cav_x", transport=transport, **kw)


def test_503_is_retried_after_retry_after_and_the_token_is_sent() -> None:
    transport, seen = scripted(busy(), busy(), httpx.Response(200, json={"id": "s1", "status": "queued"}))
    assert client(transport).study("s1")["id"] == "s1"
    assert len(seen) == 3 and all(r.headers["Authorization"] == "Bearer cav_x" for r in seen)


def test_an_in_flight_idempotency_key_is_retried_but_a_plain_409_is_not() -> None:
    in_flight = httpx.Response(409, headers={**PROBLEM, "Retry-After": "0"}, json={"title": "Request in flight", "detail": "wait"})
    transport, seen = scripted(in_flight, httpx.Response(201, json={"id": "s1"}))
    assert client(transport).submit({"name": "x"}, idempotency_key="k1")["id"] == "s1"
    assert len(seen) == 2 and seen[0].headers["Idempotency-Key"] == "k1"
    conflict = httpx.Response(409, headers=PROBLEM, json={"title": "Conflict", "detail": "study 's1' is already completed"})
    transport, seen = scripted(conflict)
    with pytest.raises(CaviarError) as err:
        client(transport).cancel("s1")
    assert len(seen) == 1 and err.value.status == 409 and err.value.detail == "study 's1' is already completed"


def test_problem_details_come_back_with_their_field() -> None:
    body = {"type": "x", "title": "Invalid definition", "status": 422, "detail": "trainable: unknown trainable 'x'", "field": "trainable"}
    transport, _ = scripted(httpx.Response(422, headers=PROBLEM, json=body))
    with pytest.raises(CaviarError) as err:
        client(transport).submit("name: x\n")
    assert (err.value.status, err.value.field, err.value.title) == (422, "trainable", "Invalid definition")
    assert err.value.detail == "trainable: unknown trainable 'x'"


@pytest.mark.parametrize("answer", [httpx.ConnectError("refused"), httpx.Response(502, text="<html>bad gateway</html>")],
                         ids=["unreachable", "not-json"])
def test_no_answer_or_a_foreign_one_is_one_clear_error(answer: httpx.Response | Exception) -> None:
    transport, _ = scripted(answer)
    with pytest.raises(CaviarError) as err:
        client(transport).trainables()
    assert ("cannot reach Caviar at http://caviar.test" in err.value.detail) if isinstance(answer, Exception) else (
        err.value.status == 502 and err.value.detail.startswith("HTTP 502"))


def test_retries_stop_after_the_window_and_the_last_answer_is_the_error() -> None:
    transport, seen = scripted(busy())
    with pytest.raises(CaviarError) as err:
        client(transport, retry_for_s=0.3).study("s1")
    assert err.value.status == 503 and len(seen) >= 2


def test_wait_follows_a_study_to_its_end() -> None:
    states = iter(["queued", "running", "completed"])
    updates: list[str] = []
    on: Callable[[dict[str, str]], None] = lambda s: updates.append(s["status"])  # noqa: E731
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"id": "s1", "status": next(states)}))
    assert client(transport).wait("s1", poll_s=0, on_update=on)["status"] == "completed"
    assert updates == ["queued", "running", "completed"]
