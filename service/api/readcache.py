"""The polled reads (a study, its trials), served from memory for a fraction of a second.

Clients poll `GET /v1/studies/{id}` and `.../trials` (dashboards, CI waiting on a study, the CLI's
`--wait`), often many at once. Each read is a store query, an ORM load and a JSON encoding in a
worker thread: about 2 ms of CPU, which at 32 connections on a small machine queues up to p99s of
200+ ms (docs/benchmarks.md §4). Here the encoded JSON is kept for ``ttl_s`` per (owner, study,
endpoint):

- a fresh entry is returned from the event loop, with no thread hop and no store query;
- an expired one is refreshed by one worker, however many requests ask (single flight); while
  it refreshes, requests get the entry they had if it is younger than ``max_stale_s``, so
  requests do not queue behind the refresh. Older than that (say the store is down), they wait for
  the refresh and see its error;
- what this API process itself changes (a cancel) drops the study's entries at once, and a refresh
  that was under way then is not kept. What the study's driver writes shows within ``ttl_s`` plus
  one refresh;
- when a refresh finds a study changed, the study's other entries are dropped too, so the two
  endpoints never disagree by more than what changed since that refresh (a study read as completed
  is not followed by a cached trial list from before).

Errors (404, the store's 503) are not cached. ``ttl_s`` = 0 turns the cache off.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool

Key = tuple[str, str, str]  # (study id, owner, endpoint)
MAX_STALE_S = 2.0  # an entry older than this is never served: readers wait for its refresh


class ReadCache:
    def __init__(self, ttl_s: float, max_stale_s: float = MAX_STALE_S, max_entries: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.max_stale_s, self.max_entries = ttl_s, max(max_stale_s, ttl_s), max_entries
        self.clock = clock  # tests pass their own
        self._entries: OrderedDict[Key, tuple[float, bytes]] = OrderedDict()
        self._refreshing: dict[Key, asyncio.Future[bytes]] = {}
        self._generation: dict[str, int] = {}  # per study: bumped by invalidate()

    async def get(self, key: Key, fill: Callable[[], bytes]) -> bytes:
        """The cached body of ``key``, or ``fill()``'s (run in a worker thread)."""
        if self.ttl_s <= 0:
            return await run_in_threadpool(fill)
        entry = self._entries.get(key)
        now = self.clock()
        if entry is not None and now - entry[0] < self.ttl_s:
            return entry[1]
        refresh = self._refreshing.get(key)
        if refresh is None:
            refresh = asyncio.ensure_future(self._refresh(key, fill))
            refresh.add_done_callback(_retrieve)  # an error nobody awaited is not logged as lost
            self._refreshing[key] = refresh
        if entry is not None and now - entry[0] < self.max_stale_s:
            return entry[1]
        return await asyncio.shield(refresh)

    async def _refresh(self, key: Key, fill: Callable[[], bytes]) -> bytes:
        generation = self._generation.get(key[0], 0)
        started = self.clock()
        try:
            body = await run_in_threadpool(fill)
        finally:
            self._refreshing.pop(key, None)
        if self._generation.get(key[0], 0) == generation:  # not invalidated meanwhile
            previous = self._entries.get(key)
            if previous is not None and previous[1] != body:
                # the study changed: its other views (the study, its trials) are older than this one,
                # so drop them, or a reader could see a completed study beside running trials
                self.invalidate(key[0])
            self._entries[key] = (started, body)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return body

    def invalidate(self, study_id: str) -> None:
        """Forget what is cached of ``study_id`` (this process changed it)."""
        self._generation[study_id] = self._generation.get(study_id, 0) + 1
        for key in [k for k in self._entries if k[0] == study_id]:
            del self._entries[key]


def _retrieve(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()
