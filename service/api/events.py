"""GET /v1/studies/{id}/events: the study as Server-Sent Events.

First (unless the client resumes with ``Last-Event-ID``) a ``snapshot``: the study as GET
/v1/studies/{id} returns it, so a client that connects late starts from the current state. Then,
as they are stored: ``trial_started``, ``epoch`` (one trial's epoch result), ``stopped_early``,
``completed``, ``failed``, ``retried``, ``new_best`` (after the epoch that set it), and at the end
``study_finished`` (the study as GET returns it), after which the stream ends. Each event's id is
the log position ``<metric pk>.<event pk>`` (service.store.events): reconnecting with it as
``Last-Event-ID`` continues exactly after it. A comment line every 15 s keeps idle connections
(and proxies) open. The store is read every ``POLL_S`` per connection.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event

from service.api import studies
from service.api.studies import Context
from service.definition import FINISHED, StudyStatus

POLL_S = 0.5
PING_S = 15.0
_MARK = re.compile(r"^(\d{1,18})\.(\d{1,18})$")


def parse_mark(last_event_id: str | None) -> tuple[int, int] | None:
    """A ``Last-Event-ID`` this stream sent (``12.3``), or None (then the stream starts with a snapshot)."""
    found = _MARK.match(last_event_id.strip()) if last_event_id else None
    return (int(found.group(1)), int(found.group(2))) if found else None


def _sse(event: str, mark: tuple[int, int], data: Any) -> bytes:
    text = data.decode() if isinstance(data, bytes) else json.dumps(data, separators=(",", ":"))
    return format_sse_event(event=event, id=f"{mark[0]}.{mark[1]}", data_str=text)


async def stream(ctx: Context, request: Request, study_id: str, owner: str, mark: tuple[int, int] | None) -> AsyncIterator[bytes]:
    store = ctx.store
    row = await run_in_threadpool(studies.get, ctx, study_id, owner)
    metric, mode = row.definition["objective"]["metric"], row.definition["objective"]["mode"]
    if mark is None:
        mark = await run_in_threadpool(store.events.marks, study_id)
        snapshot = await run_in_threadpool(studies.view, ctx, study_id, owner)
        best = snapshot.best["value"] if snapshot.best else None
        yield _sse("snapshot", mark, snapshot.model_dump_json().encode())
    else:
        best = await run_in_threadpool(store.events.best_until, study_id, mark[0], metric, mode)
    sent = time.monotonic()
    while not await request.is_disconnected():
        status = (await run_in_threadpool(store.studies.get, study_id)).status  # type: ignore[union-attr]
        events = await run_in_threadpool(store.events.after, study_id, mark)
        for ev in events:
            mark = ev.mark
            yield _sse(ev.kind, mark, {"trial_id": ev.trial_id, "at": ev.at, **ev.data})
            value = ev.data.get("metrics", {}).get(metric) if ev.kind == "epoch" else None
            if isinstance(value, (int, float)) and (best is None or (value > best if mode == "max" else value < best)):
                best = float(value)
                yield _sse("new_best", mark, {"trial_id": ev.trial_id, "epoch": ev.data["epoch"], "value": best, "metric": metric})
        if events:
            sent = time.monotonic()
            continue
        if StudyStatus(status) in FINISHED:  # read before the events: nothing stored before the end is missed
            final = await run_in_threadpool(studies.view, ctx, study_id, owner)
            yield _sse("study_finished", mark, final.model_dump_json().encode())
            return
        if time.monotonic() - sent >= PING_S:
            yield KEEPALIVE_COMMENT
            sent = time.monotonic()
        await asyncio.sleep(POLL_S)
