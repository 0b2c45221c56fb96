"""The read cache of GET /v1/studies/{id} and /trials: unit tests with a fake fill, then over HTTP."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from service.api.readcache import ReadCache
from service.local import wait_until
from service.store import Store, now
from tests.service.fakes import inprocess_api


class Fill:
    """A fill that counts its calls and can fail; a gated one blocks its worker thread until ``release()``."""

    def __init__(self, gated: bool = False) -> None:
        self.calls, self.error = 0, None
        self.lock = threading.Lock()
        self.started, self.gate = threading.Event(), threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self) -> bytes:
        with self.lock:
            self.calls += 1
            n = self.calls
        self.started.set()
        assert self.gate.wait(10), "the test never released the fill"
        if self.error is not None:
            raise self.error
        return f"v{n}".encode()

    def release(self) -> None:
        self.gate.set()


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


KEY = ("s1", "local", "study")


def test_a_fresh_entry_is_served_without_filling_and_a_cold_key_fills_once() -> None:
    async def main() -> None:
        cache, fill = ReadCache(ttl_s=60, clock=Clock()), Fill(gated=True)
        readers = asyncio.gather(*(cache.get(KEY, fill) for _ in range(50)))
        await asyncio.to_thread(fill.started.wait, 10)  # every reader is waiting on the one refresh
        fill.release()
        assert set(await readers) == {b"v1"} and fill.calls == 1  # single flight
        assert await cache.get(KEY, fill) == b"v1" and fill.calls == 1
        assert await cache.get(("s1", "bob", "study"), fill) == b"v2"  # owners do not share entries

    asyncio.run(main())


def test_an_expired_entry_is_served_while_one_refresh_runs_then_replaced() -> None:
    async def main() -> None:
        clock = Clock()
        cache, fill = ReadCache(ttl_s=0.05, max_stale_s=5, clock=clock), Fill()
        assert await cache.get(KEY, fill) == b"v1"
        fill.gate.clear()  # the next refresh blocks until released
        clock.now = 0.1  # expired, but young enough to serve while it refreshes
        stale = await asyncio.gather(*(cache.get(KEY, fill) for _ in range(20)))
        assert set(stale) == {b"v1"} and not fill.gate.is_set()  # all answered while the refresh was still blocked
        fill.release()
        clock.now = 10.0  # too old to serve: the next reader waits for the refresh under way
        assert await cache.get(KEY, fill) == b"v2" and fill.calls == 2

    asyncio.run(main())


def test_too_old_an_entry_waits_for_the_refresh_and_errors_are_not_cached() -> None:
    async def main() -> None:
        clock = Clock()
        cache, fill = ReadCache(ttl_s=0.01, max_stale_s=0.05, clock=clock), Fill()
        assert await cache.get(KEY, fill) == b"v1"
        clock.now = 0.1
        fill.error = LookupError("no study 's1'")
        with pytest.raises(LookupError):
            await cache.get(KEY, fill)
        with pytest.raises(LookupError):
            await cache.get(KEY, fill)  # the failure was not kept: it is tried again
        assert fill.calls == 3
        fill.error = None
        assert await cache.get(KEY, fill) == b"v4"

    asyncio.run(main())


def test_invalidate_drops_the_entry_and_a_refresh_under_way_is_not_kept() -> None:
    async def main() -> None:
        cache, fill = ReadCache(ttl_s=60, clock=Clock()), Fill()
        assert await cache.get(KEY, fill) == b"v1"
        cache.invalidate("s1")
        fill.gate.clear()
        fill.started.clear()
        pending = asyncio.ensure_future(cache.get(KEY, fill))  # fills v2 ...
        await asyncio.to_thread(fill.started.wait, 10)
        cache.invalidate("s1")  # ... but the study changed meanwhile
        fill.release()
        assert await pending == b"v2"
        assert await cache.get(KEY, fill) == b"v3" and fill.calls == 3

    asyncio.run(main())


def test_a_refresh_that_finds_the_study_changed_drops_its_other_views() -> None:
    async def main() -> None:
        clock = Clock()
        cache = ReadCache(ttl_s=0.05, max_stale_s=0.06, clock=clock)
        study, trials = Fill(), Fill()
        other = Fill()
        assert await cache.get(("s1", "local", "trials"), trials) == b"v1"
        assert await cache.get(("s2", "local", "trials"), other) == b"v1"
        assert await cache.get(KEY, study) == b"v1"
        clock.now = 0.1
        assert await cache.get(KEY, study) == b"v2"  # too old to serve: refreshed, and it changed
        cache.ttl_s = 60  # from here on nothing expires by age
        assert await cache.get(("s1", "local", "trials"), trials) == b"v2"  # dropped with the change: read again
        assert await cache.get(("s2", "local", "trials"), other) == b"v1"  # another study: kept
        assert await cache.get(KEY, study) == b"v2" and study.calls == 2

    asyncio.run(main())


def test_ttl_zero_turns_it_off() -> None:
    async def main() -> None:
        cache, fill = ReadCache(ttl_s=0), Fill()
        assert [await cache.get(KEY, fill) for _ in range(3)] == [b"v1", b"v2", b"v3"]

    asyncio.run(main())


def test_over_http_reads_follow_the_drivers_writes_and_a_cancel_shows_at_once(tmp_path: Path) -> None:
    definition = {"name": "c", "trainable": "busy_work", "dataset": {"name": "digits"},
                  "search_space": {"x": {"type": "float", "low": 0, "high": 1}}, "budget": {"num_trials": 2}}
    with inprocess_api(tmp_path, read_cache_s=0.5) as (client, _):  # a fake Ray: the study stays queued
        sid = client.submit(definition)["id"]
        first = client.study(sid)
        assert client.trials(sid) == []
        # the study's driver writes to the store (a connection of its own): readers see it within ~0.5 s
        store = Store(f"sqlite:///{tmp_path / 'caviar.db'}")
        store.trials.upsert(sid, "t1", config={"x": 0.5}, state="running", started_at=now(), finished_at=None)
        store.trials.add_epoch(sid, "t1", {"epoch": 1, "val_accuracy": 0.7}, "val_accuracy", "max")
        trials, study = wait_until(lambda: (t := client.trials(sid)) and (s := client.study(sid))["best"] and (t, s), 5,
                                   "the driver's writes to show", interval=0.05)
        assert trials[0]["trial_id"] == "t1" and study["best"]["value"] == 0.7 and study["trial_counts"]["running"] == 1
        assert study.keys() == first.keys()
        # a cancel through the API is visible to the very next read, not 0.5 s later
        assert client.cancel(sid)["status"] == "cancelled"
        assert client.study(sid)["status"] == "cancelled"
        # unknown and other owners' studies are still 404 problems, and not cached as such
        r = client.http.get("/v1/studies/nope")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
