"""GET /v1/studies/{id}?wait_s=: a long poll that answers as soon as the study finishes, read fresh
(not from the read cache), over HTTP against the real app (Ray replaced by a fake)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from service.client import CaviarError
from service.definition import StudyStatus
from service.store import Store
from tests.service.fakes import GOOD, inprocess_api


def test_a_long_poll_answers_when_the_study_finishes_with_what_the_store_says(tmp_path: Path) -> None:
    # a read cache that would hold a study's view for a minute: the long poll must not answer from it
    with inprocess_api(tmp_path, read_cache_s=60) as (client, _jobs):
        store = Store(f"sqlite:///{tmp_path / 'caviar.db'}")
        sid = client.submit(GOOD)["id"]
        store.studies.update(sid, status=StudyStatus.RUNNING.value)
        before = client.study(sid)["status"]  # now cached for a minute
        # not finished within wait_s: the study as it is, once wait_s has passed
        assert client.study(sid, wait_s=0.2)["status"] == before

        with pytest.raises(TimeoutError):  # Client.wait gives up at its timeout, the study still running
            client.wait(sid, poll_s=0.2, timeout_s=0.5)

        answers: list[dict[str, Any]] = []

        def long_poll() -> None:
            answers.append(client.study(sid, wait_s=60))

        waiters = [threading.Thread(target=long_poll) for _ in range(3)]  # one watcher wakes them all
        for t in waiters:
            t.start()
        waiters[0].join(0.5)
        assert all(t.is_alive() for t in waiters), f"a long poll answered while the study ran: {answers}"
        store.studies.finish(sid, StudyStatus.COMPLETED)
        for t in waiters:
            t.join(30)  # each answers when the study finishes, not after its 60 s
        assert not any(t.is_alive() for t in waiters), "a long poll did not answer when the study finished"
        assert [a["status"] for a in answers] == ["completed"] * 3 and answers[0]["finished_at"]
        # the cached view was dropped: a plain read shows the end too, not the minute-old view
        assert client.study(sid)["status"] == "completed"
        assert client.wait(sid, poll_s=30, timeout_s=10)["status"] == "completed"


def test_a_long_poll_checks_its_bounds_and_who_asks(tmp_path: Path) -> None:
    with inprocess_api(tmp_path) as (client, _jobs):
        sid = client.submit(GOOD)["id"]
        for bad in (-1, 61):
            with pytest.raises(CaviarError) as err:
                client.request("GET", f"/v1/studies/{sid}", params={"wait_s": bad})
            assert err.value.status == 422 and err.value.field == "query.wait_s"
        with pytest.raises(CaviarError) as err:
            client.study("nope", wait_s=5)  # no such study: a 404 at once, not after 5 s
        assert err.value.status == 404
