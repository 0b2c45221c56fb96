"""GET /v1/studies/{id}/events over HTTP (Ray faked, the store written as the driver writes it):
snapshot first, trial and epoch events as they are stored, new_best, study_finished and the end;
resuming with Last-Event-ID; a late client; the client's follow()."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from service.api.app import create_app
from service.client import CaviarError, Client
from service.definition import StudyStatus
from service.local import wait_until
from service.store import now
from tests.service.fakes import GOOD, FakeJobs, serve_in_thread, settings_for


def collect(client: Client, sid: str, into: list[tuple[str, str, dict[str, Any]]], last: str | None = None) -> threading.Thread:
    t = threading.Thread(target=lambda: into.extend(client.events(sid, last)), daemon=True)
    t.start()
    return t


def test_the_event_stream_of_a_study(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    with serve_in_thread(app) as url, Client(url, retry_for_s=0) as client:
        sid = client.submit(GOOD)["id"]
        store.studies.update(sid, status="running", started_at=now())
        got: list[tuple[str, str, dict[str, Any]]] = []
        reader = collect(client, sid, got)
        wait_until(lambda: got, 10, "the snapshot")
        assert got[0][0] == "snapshot" and got[0][2]["id"] == sid and got[0][2]["status"] == "running"

        def epoch(trial: str, n: int, acc: float) -> None:
            store.trials.add_epochs(sid, [(trial, {"epoch": n, "val_accuracy": acc, "reported_at": now().timestamp()})], "val_accuracy", "max")

        store.trials.upsert(sid, "a", config={"lr": 0.1}, state="running", event="trial_started", event_data={"config": {"lr": 0.1}})
        epoch("a", 1, 0.5)
        wait_until(lambda: any(k == "epoch" for k, _, _ in got), 10, "the first epoch event")  # live, before the study ends
        epoch("a", 2, 0.4)
        store.trials.upsert(sid, "a", state="stopped_early", event="stopped_early", event_data={"epochs": 2})
        store.trials.upsert(sid, "b", config={"lr": 0.2}, state="running", event="trial_started", event_data={"config": {"lr": 0.2}})
        store.trials.recovered(sid, "b")
        epoch("b", 1, 0.45)
        epoch("b", 2, 0.7)
        store.trials.upsert(sid, "b", state="completed", event="completed", event_data={"epochs": 2})
        store.studies.finish(sid, StudyStatus.COMPLETED)
        reader.join(20)
        assert not reader.is_alive(), "the stream did not end after study_finished"

        kinds = [k for k, _, _ in got]
        assert kinds == ["snapshot", "trial_started", "epoch", "new_best", "epoch", "stopped_early", "trial_started", "retried",
                         "epoch", "epoch", "new_best", "completed", "study_finished"], kinds
        ids = [tuple(map(int, i.split("."))) for _, i, _ in got]
        assert ids == sorted(ids)  # positions only move forward
        first_epoch = got[2][2]
        assert first_epoch["trial_id"] == "a" and first_epoch["epoch"] == 1 and first_epoch["metrics"]["val_accuracy"] == 0.5
        assert [d["value"] for k, _, d in got if k == "new_best"] == [0.5, 0.7]
        assert got[-1][2]["status"] == "completed" and got[-1][2]["best"]["value"] == 0.7

        # resume after the first epoch: exactly what followed it, new_best judged against what came before
        resumed: list[tuple[str, str, dict[str, Any]]] = []
        collect(client, sid, resumed, last=got[3][1]).join(20)
        assert [k for k, _, _ in resumed] == kinds[4:]
        # a client that connects after the end: the current state, then the end
        late: list[tuple[str, str, dict[str, Any]]] = []
        collect(client, sid, late).join(20)
        assert [k for k, _, _ in late] == ["snapshot", "study_finished"]
        # an id this server never sent is no position: the stream starts with a snapshot
        odd: list[tuple[str, str, dict[str, Any]]] = []
        collect(client, sid, odd, last="garbage").join(20)
        assert odd[0][0] == "snapshot"
        with pytest.raises(CaviarError) as exc:
            list(client.events("nope"))
        assert exc.value.status == 404


def test_follow_keeps_the_counts_current_and_returns_the_final_study(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    with serve_in_thread(app) as url, Client(url, retry_for_s=0) as client:
        sid = client.submit(GOOD)["id"]
        seen: list[dict[str, Any]] = []
        result: list[dict[str, Any]] = []
        t = threading.Thread(target=lambda: result.append(client.follow(sid, on_update=lambda s: seen.append(
            {"counts": dict(s["trial_counts"]), "best": s["best"]}))), daemon=True)
        t.start()
        wait_until(lambda: seen, 10, "the snapshot")
        store.studies.update(sid, status="running", started_at=now())
        store.trials.upsert(sid, "a", config={}, state="running", event="trial_started")
        store.trials.add_epochs(sid, [("a", {"epoch": 1, "val_accuracy": 0.8, "reported_at": now().timestamp()})], "val_accuracy", "max")
        wait_until(lambda: seen[-1]["best"] is not None, 10, "the new best")
        assert seen[-1]["counts"]["running"] == 1 and seen[-1]["best"]["value"] == 0.8
        store.trials.upsert(sid, "a", state="completed", event="completed")
        store.studies.finish(sid, StudyStatus.COMPLETED)
        t.join(20)
        assert result and result[0]["status"] == "completed" and result[0]["trial_counts"]["completed"] == 1
