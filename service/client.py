"""One HTTP client for Caviar's REST API, on httpx: the CLI, the benchmarks and the tests use it.

Errors come back as :class:`CaviarError` carrying the problem details (status, title, detail,
field). Safe retries are the client's, through tenacity: 503 (the store is busy) and, for a
submission with an Idempotency-Key, 409 (the same key is still in flight), each after the
server's ``Retry-After`` (at most 10 s a wait, for up to ``retry_for_s`` in all).
"""

from __future__ import annotations

import json
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
from tenacity import RetryCallState, retry, retry_if_result, stop_after_delay

FINISHED = ("completed", "failed", "cancelled")
MAX_WAIT_S = 60.0  # the longest long poll the server holds (GET /v1/studies/{id}?wait_s=)
DEFAULT_URL = "http://127.0.0.1:8000"


class CaviarError(Exception):
    """An error answer of the API (problem details), or no answer at all (``status`` 0)."""

    def __init__(self, status: int, detail: str, *, title: str = "", field: str | None = None, body: Any = None) -> None:
        self.status, self.detail, self.title, self.field, self.body = status, detail, title, field, body
        super().__init__(detail)


def _retryable(r: httpx.Response) -> bool:
    in_flight = r.status_code == 409 and "Idempotency-Key" in r.request.headers
    return r.status_code == 503 or in_flight


def _retry_after(state: RetryCallState) -> float:
    r = state.outcome.result() if state.outcome else None
    try:
        return min(max(float(r.headers.get("Retry-After", "1")), 0.0), 10.0) if r is not None else 1.0
    except ValueError:
        return 1.0


def _apply(study: dict[str, Any], event: str, data: dict[str, Any]) -> None:
    """Keep a study's counts and best current from one event (the final state comes with study_finished)."""
    counts = study["trial_counts"]
    if event == "trial_started":
        counts["running"] = counts.get("running", 0) + 1
        study["status"] = "running"
    elif event in ("completed", "stopped_early", "failed"):
        counts["running"] = max(0, counts.get("running", 0) - 1)
        counts[event] = counts.get(event, 0) + 1
    elif event == "new_best":
        study["best"] = {"trial_id": data["trial_id"], "value": data["value"], "config": None}


class Client:
    """``Client(url, token=...)``; ``transport`` replaces the network (tests script answers with httpx.MockTransport)."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *, timeout: float = 30.0, retry_for_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)
        self._send = retry(retry=retry_if_result(_retryable), wait=_retry_after, stop=stop_after_delay(retry_for_s),
                           retry_error_callback=lambda state: state.outcome.result() if state.outcome else None)(self._send_once)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send_once(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.http.request(method, path, **kw)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """Send with safe retries; the decoded JSON body, or CaviarError."""
        try:
            r: httpx.Response = self._send(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CaviarError(0, f"cannot reach Caviar at {self.url}: {exc}") from None
        if r.status_code >= 400:
            self._raise(r)
        return r.json() if r.content else None  # 204: no body

    @staticmethod
    def _raise(r: httpx.Response) -> NoReturn:
        """An error answer as CaviarError, with the problem details when the body has them."""
        try:
            body = r.json()
        except ValueError:
            raise CaviarError(r.status_code, f"HTTP {r.status_code}: {r.text[:200]}") from None
        if not isinstance(body, dict):
            raise CaviarError(r.status_code, f"HTTP {r.status_code}: {r.text[:200]}", body=body)
        raise CaviarError(r.status_code, str(body.get("detail") or body.get("title") or r.text), title=str(body.get("title", "")),
                          field=body.get("field"), body=body)

    # -- studies ------------------------------------------------------------------------------

    def submit(self, definition: dict[str, Any] | str | bytes, *, idempotency_key: str | None = None) -> dict[str, Any]:
        """POST a definition: a mapping (sent as JSON) or the text of a YAML/JSON file (sent as YAML,
        which JSON is a subset of)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if isinstance(definition, dict):
            return dict(self.request("POST", "/v1/studies", json=definition, headers=headers))
        content = definition.encode() if isinstance(definition, str) else definition
        return dict(self.request("POST", "/v1/studies", content=content, headers={"Content-Type": "application/yaml", **headers}))

    def study(self, study_id: str, *, wait_s: float = 0.0) -> dict[str, Any]:
        """The study; with ``wait_s`` (at most 60) a long poll: the server answers as soon as it has
        finished, or after ``wait_s`` with it as it is."""
        if wait_s <= 0:
            return dict(self.request("GET", f"/v1/studies/{study_id}"))
        t = self.http.timeout  # the answer may take wait_s longer than a read is allowed
        timeout = httpx.Timeout(t.connect, read=None if t.read is None else t.read + wait_s, write=t.write, pool=t.pool)
        return dict(self.request("GET", f"/v1/studies/{study_id}", params={"wait_s": wait_s}, timeout=timeout))

    def studies(self, status: str | None = None, offset: int = 0, limit: int = 50, view: str = "full") -> dict[str, Any]:
        """A page of studies; ``view="summary"``: without their definitions."""
        params: dict[str, Any] = {"offset": offset, "limit": limit, **({"status": status} if status else {}), "view": view}
        return dict(self.request("GET", "/v1/studies", params=params))

    def trials(self, study_id: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/v1/studies/{study_id}/trials"))

    def trial(self, study_id: str, trial_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/studies/{study_id}/trials/{trial_id}"))

    def download_checkpoint(self, study_id: str, trial_id: str, directory: str | Path) -> Path:
        """The trial's newest checkpoint, extracted into ``directory`` (created; files already there
        with the same names are replaced): Tune's checkpoint files and ``caviar.json``. Load it with
        ``trainables.engine.load_model(directory)``."""
        target = Path(directory)
        with tempfile.TemporaryFile() as tmp:
            try:
                with self.http.stream("GET", f"/v1/studies/{study_id}/trials/{trial_id}/checkpoint") as r:
                    if r.status_code >= 400:
                        r.read()
                        self._raise(r)
                    for chunk in r.iter_bytes(1 << 20):
                        tmp.write(chunk)
            except httpx.HTTPError as exc:
                raise CaviarError(0, f"cannot reach Caviar at {self.url}: {exc}") from None
            tmp.seek(0)
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=tmp, mode="r:gz") as tar:
                tar.extractall(target, filter="data")  # no absolute paths, no links out, no devices
        return target

    def best(self, study_id: str, k: int = 5) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/studies/{study_id}/best", params={"k": k}))

    def pareto(self, study_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/studies/{study_id}/pareto"))

    def cancel(self, study_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/studies/{study_id}/cancel"))

    def refine(self, study_id: str, *, top_k: int = 5, num_trials: int = 16, dry_run: bool = False, **overrides: Any) -> dict[str, Any]:
        """A new study in ``study_id``'s space narrowed around its top-k (with ``dry_run``: its
        definition, nothing stored). ``overrides``: definition keys (name, sampler, budget, ...)."""
        body = {"top_k": top_k, "num_trials": num_trials, **overrides}
        return dict(self.request("POST", f"/v1/studies/{study_id}/refine", json=body, params={"dry_run": "true"} if dry_run else None))

    def adjust(self, study_id: str, trial_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Panda mode: change a running trial's knobs from its next epoch on."""
        return dict(self.request("POST", f"/v1/studies/{study_id}/trials/{trial_id}/adjust", json=changes))

    def fork(self, study_id: str, trial_id: str, from_epoch: int, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """A new panda study whose trial starts from ``trial_id``'s checkpoint at ``from_epoch`` with ``changes``."""
        return dict(self.request("POST", f"/v1/studies/{study_id}/trials/{trial_id}/fork", json={"from_epoch": from_epoch, "changes": changes or {}}))

    # -- schedules -----------------------------------------------------------------------------

    def create_schedule(self, definition: dict[str, Any], every: str, *, top_k: int = 5) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/schedules", json={"definition": definition, "every": every, "top_k": top_k}))

    def schedules(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/schedules"))

    def schedule(self, schedule_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/schedules/{schedule_id}"))

    def pause_schedule(self, schedule_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/schedules/{schedule_id}/pause"))

    def resume_schedule(self, schedule_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/schedules/{schedule_id}/resume"))

    def delete_schedule(self, schedule_id: str) -> None:
        self.request("DELETE", f"/v1/schedules/{schedule_id}")

    def extend(self, study_id: str, num_trials: int) -> dict[str, Any]:
        """``num_trials`` more trials for a finished study (same id, same Optuna study)."""
        return dict(self.request("POST", f"/v1/studies/{study_id}/extend", json={"num_trials": num_trials}))

    def wait(self, study_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None,
             on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Wait until the study is completed, failed or cancelled; returns it. Each read is a long poll
        of up to ``poll_s`` (at most 60 s; GET /v1/studies/{id}?wait_s=): the server answers as soon
        as the study finishes, so its end is seen at once, and otherwise every ``poll_s`` with the
        study as it is, which ``on_update`` sees. TimeoutError after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            asked = time.monotonic()
            left = min(poll_s, MAX_WAIT_S) if deadline is None else max(0.0, min(poll_s, MAX_WAIT_S, deadline - asked))
            study = self.study(study_id, wait_s=left)
            if on_update is not None:
                on_update(study)
            if study["status"] in FINISHED:
                return study
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"study {study_id} still {study['status']} after {timeout_s:g} s")
            # a server that answered sooner (one without long polls) is not asked again before poll_s
            time.sleep(max(0.0, left - (time.monotonic() - asked)))

    def events(self, study_id: str, last_event_id: str | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """The study's Server-Sent Events as (event, id, data), from GET /v1/studies/{id}/events;
        ends when the server ends the stream (after ``study_finished``) or the connection drops."""
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        try:
            with self.http.stream("GET", f"/v1/studies/{study_id}/events", headers=headers,
                                  timeout=httpx.Timeout(30.0, read=60.0)) as r:  # the server pings every 15 s
                if r.status_code >= 400:
                    r.read()
                    self._raise(r)
                event, ident = "message", ""
                data: list[str] = []
                for line in r.iter_lines():
                    if not line:  # an event ends at a blank line
                        if data:
                            yield event, ident, json.loads("\n".join(data))
                        event, data = "message", []
                    elif line.startswith(":"):
                        continue  # a keep-alive comment
                    else:
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "event":
                            event = value
                        elif name == "id":
                            ident = value
                        elif name == "data":
                            data.append(value)
        except httpx.HTTPError as exc:
            raise CaviarError(0, f"event stream from {self.url} broke: {exc}") from None

    def follow(self, study_id: str, on_update: Callable[[dict[str, Any]], None] | None = None, *, reconnects: int = 30) -> dict[str, Any]:
        """Follow the study through its event stream until it ends; returns it as GET returns it.
        ``on_update`` sees the study (its counts and best kept current from the events) after each
        event. A dropped stream is resumed from the last event id (the server may restart)."""
        study: dict[str, Any] | None = None
        last: str | None = None
        failures = 0
        while True:
            try:
                for event, ident, data in self.events(study_id, last):
                    last, failures = ident or last, 0
                    if event in ("snapshot", "study_finished"):
                        study = data
                    elif study is not None:
                        _apply(study, event, data)
                    if study is not None and on_update is not None:
                        on_update(study)
                    if event == "study_finished" and study is not None:
                        return study
            except CaviarError as exc:
                if exc.status not in (0, 502, 503, 504):
                    raise
            failures += 1
            if failures > reconnects:
                raise CaviarError(0, f"lost the event stream of study {study_id} {reconnects} times")
            time.sleep(min(5.0, 0.5 * failures))

    # -- catalog and health -------------------------------------------------------------------

    def trainables(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/trainables"))

    def search_spaces(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/search-spaces"))

    def healthy(self) -> bool:
        try:
            return self.http.get("/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
