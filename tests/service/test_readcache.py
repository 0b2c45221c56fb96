"""The read cache of GET /v1/studies/{id} and /trials: unit tests with a fake fill, then over HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.readcache import ReadCache
from service.store import Store, now
from tests.conftest import Api, no_ray


class Fill:
    """A fill that counts its calls, takes ``delay`` seconds in its worker thread, and can fail."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls, self.delay, self.error = 0, delay, None
        self.lock = threading.Lock()

    def __call__(self) -> bytes:
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return f"v{n}".encode()


KEY = ("s1", "local", "study")


def test_a_fresh_entry_is_served_without_filling_and_a_cold_key_fills_once() -> None:
    async def main() -> None:
        cache, fill = ReadCache(ttl_s=60), Fill(delay=0.05)
        bodies = await asyncio.gather(*(cache.get(KEY, fill) for _ in range(50)))  # single flight
        assert set(bodies) == {b"v1"} and fill.calls == 1
        assert await cache.get(KEY, fill) == b"v1" and fill.calls == 1
        assert await cache.get(("s1", "bob", "study"), fill) == b"v2"  # owners do not share entries

    asyncio.run(main())


def test_an_expired_entry_is_served_while_one_refresh_runs_then_replaced() -> None:
    async def main() -> None:
        cache, fill = ReadCache(ttl_s=0.05, max_stale_s=5), Fill(delay=0.2)
        assert await cache.get(KEY, fill) == b"v1"
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        stale = await asyncio.gather(*(cache.get(KEY, fill) for _ in range(20)))
        assert set(stale) == {b"v1"} and time.monotonic() - t0 < 0.1  # nobody waited for the refresh
        await asyncio.sleep(0.3)
        assert fill.calls == 2 and await cache.get(KEY, fill) == b"v2"

    asyncio.run(main())


def test_too_old_an_entry_waits_for_the_refresh_and_errors_are_not_cached() -> None:
    async def main() -> None:
        cache, fill = ReadCache(ttl_s=0.01, max_stale_s=0.05), Fill()
        assert await cache.get(KEY, fill) == b"v1"
        await asyncio.sleep(0.1)
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
        cache, fill = ReadCache(ttl_s=60), Fill(delay=0.1)
        assert await cache.get(KEY, fill) == b"v1"
        cache.invalidate("s1")
        pending = asyncio.ensure_future(cache.get(KEY, fill))  # fills v2 ...
        await asyncio.sleep(0.02)
        cache.invalidate("s1")  # ... but the study changed meanwhile
        assert await pending == b"v2"
        assert await cache.get(KEY, fill) == b"v3" and fill.calls == 3

    asyncio.run(main())


def test_a_refresh_that_finds_the_study_changed_drops_its_other_views() -> None:
    async def main() -> None:
        cache = ReadCache(ttl_s=0.05, max_stale_s=0.06)
        study, trials = Fill(), Fill()
        other = Fill()
        assert await cache.get(("s1", "local", "trials"), trials) == b"v1"
        assert await cache.get(("s2", "local", "trials"), other) == b"v1"
        assert await cache.get(KEY, study) == b"v1"
        await asyncio.sleep(0.1)
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
    (tmp_path / "datasets").mkdir()
    api = Api(tmp_path, no_ray(), env={"CAVIAR_READ_CACHE_S": "0.5"})  # no Ray: the study stays queued
    api.start()
    try:
        definition = {"name": "c", "trainable": "busy_work", "dataset": {"name": "digits"},
                      "search_space": {"x": {"type": "float", "low": 0, "high": 1}}, "budget": {"num_trials": 2}}
        sid = httpx.post(f"{api.url}/v1/studies", json=definition).json()["id"]
        first = httpx.get(f"{api.url}/v1/studies/{sid}").json()
        assert httpx.get(f"{api.url}/v1/studies/{sid}/trials").json() == []
        # the study's driver writes to the store from another process: readers see it within ~0.5 s
        store = Store(f"sqlite:///{tmp_path / 'caviar.db'}")
        store.upsert_trial(sid, "t1", config={"x": 0.5}, state="running", started_at=now(), finished_at=None)
        store.add_epoch(sid, "t1", {"epoch": 1, "val_accuracy": 0.7}, "val_accuracy", "max")
        deadline, seen = time.monotonic() + 5, None
        while time.monotonic() < deadline:
            trials = httpx.get(f"{api.url}/v1/studies/{sid}/trials").json()
            study = httpx.get(f"{api.url}/v1/studies/{sid}").json()
            if trials and study["best"]:
                seen = time.monotonic()
                break
            time.sleep(0.05)
        assert seen is not None, "the driver's writes never showed"
        assert trials[0]["trial_id"] == "t1" and study["best"]["value"] == 0.7 and study["trial_counts"]["running"] == 1
        assert study.keys() == first.keys()
        # a cancel through the API is visible to the very next read, not 0.5 s later
        assert httpx.post(f"{api.url}/v1/studies/{sid}/cancel").json()["status"] == "cancelled"
        assert httpx.get(f"{api.url}/v1/studies/{sid}").json()["status"] == "cancelled"
        # unknown and other owners' studies are still 404 problems, and not cached as such
        r = httpx.get(f"{api.url}/v1/studies/nope")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    finally:
        api.stop()
