"""Scheduled re-tuning with an injected clock (no waiting): runs start when due and not before,
each warm-started from the previous run; drift is the previous best re-evaluated in the next run;
missed runs are not made up in a burst; a run waits for the previous one; pause, resume, delete;
schedules survive a restart. Then the CLI against `caviar serve`."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.api.app import create_app
from service.api.dispatch import dispatch_once
from service.api.schedules import parse_every
from service.definition import DefinitionError, StudyStatus
from service.local import LocalServer, wait_until
from tests.service.fakes import GOOD, FakeJobs, serve_in_thread, settings_for

CAVIAR = str(Path(sys.executable).parent / "caviar")
DEFINITION = {**GOOD, "name": "monthly", "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}}
T0 = datetime(2027, 1, 1, tzinfo=UTC)


def test_every_is_a_number_and_a_unit_within_bounds() -> None:
    assert parse_every("30d") == 30 * 86400 and parse_every("12h") == 43200 and parse_every("1w") == 604800 and parse_every("60s") == 60
    for bad in ("30", "d", "5s", "400d", "1.5h", "-3d"):
        with pytest.raises(DefinitionError) as info:
            parse_every(bad)
        assert info.value.field == "every"


def measure(store: Any, study_id: str, results: dict[str, tuple[float, float]]) -> None:
    """The study's driver, played: trials (trial id -> (lr, val_accuracy)), then completed."""
    for trial_id, (lr, value) in results.items():
        store.trials.upsert(study_id, trial_id, config={"lr": lr}, state="completed")
        store.trials.add_epoch(study_id, trial_id, {"epoch": 2, "val_accuracy": value}, "val_accuracy", "max")
    store.studies.finish(study_id, StudyStatus.COMPLETED)


def test_a_schedule_runs_on_time_warm_starts_reports_drift_and_survives_a_restart(tmp_path: Path) -> None:
    clock = [T0]
    settings = settings_for(tmp_path, dispatch_interval_s=60)
    app = create_app(settings, jobs=FakeJobs())
    ctx = app.state.ctx
    ctx.clock = lambda: clock[0]
    store = ctx.store
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        r = client.post("/v1/schedules", json={"definition": {**DEFINITION, "trainable": "nope"}, "every": "30d"})
        assert r.status_code == 422 and r.json()["field"] == "definition.trainable"
        r = client.post("/v1/schedules", json={"definition": {**DEFINITION, "warm_start": {"study": "0123456789abcdef"}}, "every": "30d"})
        assert r.status_code == 422 and r.json()["field"] == "definition.warm_start"
        r = client.post("/v1/schedules", json={"definition": DEFINITION, "every": "5s"})
        assert r.status_code == 422 and r.json()["field"] == "every"

        r = client.post("/v1/schedules", json={"definition": DEFINITION, "every": "30d", "top_k": 2})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]

        def runs() -> list[dict[str, Any]]:
            return list(client.get(f"/v1/schedules/{sid}").json()["runs"])

        dispatch_once(ctx)  # the dispatcher's step (the API's own loop may have taken it first: it was woken by the create)
        first = wait_until(lambda: runs() or None, 10, "the first run")
        assert len(first) == 1 and first[0]["previous_study_id"] is None
        s1 = first[0]["study_id"]
        study1 = client.get(f"/v1/studies/{s1}").json()
        assert study1["name"] == "monthly-20270101-0000" and study1["definition"]["warm_start"] is None
        assert client.get(f"/v1/schedules/{sid}").json()["next_run_at"].startswith("2027-01-31")

        clock[0] = T0 + timedelta(days=29)
        dispatch_once(ctx)
        assert len(runs()) == 1  # not due yet
        measure(store, s1, {"a": (0.01, 0.90), "b": (0.05, 0.70), "c": (0.001, 0.80)})

        clock[0] = T0 + timedelta(days=30)
        dispatch_once(ctx)
        second = runs()
        assert len(second) == 2 and second[1]["previous_study_id"] == s1
        s2 = second[1]["study_id"]
        study2 = client.get(f"/v1/studies/{s2}").json()
        assert study2["definition"]["warm_start"] == {"study": s1, "top_k": 2} and study2["parent_id"] == s1
        # the driver runs s1's best (lr 0.01) first: on today's data it scores 0.85; re-tuning finds 0.93
        measure(store, s2, {"re": (0.01, 0.85), "new": (0.02, 0.93)})
        run = runs()[1]
        assert run["previous_best_value"] == pytest.approx(0.90) and run["reevaluated_value"] == pytest.approx(0.85)
        assert run["drift"] == pytest.approx(-0.05) and run["gain"] == pytest.approx(0.08) and run["best_value"] == pytest.approx(0.93)

        clock[0] = T0 + timedelta(days=100)  # the service was down for two periods: one run, not three
        dispatch_once(ctx)
        dispatch_once(ctx)
        assert len(runs()) == 3
        assert client.get(f"/v1/schedules/{sid}").json()["next_run_at"].startswith("2027-05-01")  # T0 + 120 d: the cadence kept
        s3 = runs()[2]["study_id"]
        clock[0] = T0 + timedelta(days=121)
        dispatch_once(ctx)
        assert len(runs()) == 3  # run 3 is still queued: the next waits for it
        store.studies.finish(s3, StudyStatus.CANCELLED)

        assert client.post(f"/v1/schedules/{sid}/pause").json()["paused"] is True
        clock[0] = T0 + timedelta(days=200)
        dispatch_once(ctx)
        assert len(runs()) == 3
        resumed = client.post(f"/v1/schedules/{sid}/resume").json()
        assert resumed["paused"] is False and resumed["next_run_at"].startswith("2027-07-20")  # overdue: now
        dispatch_once(ctx)
        wait_until(lambda: len(runs()) == 4, 10, "the run after the resume")
        fourth = runs()
        assert len(fourth) == 4 and fourth[3]["previous_study_id"] is None  # the cancelled run measured nothing to start from
    # a restart: a new API process on the same database finds the schedule as it was
    app2 = create_app(settings, jobs=FakeJobs())
    with serve_in_thread(app2) as url, httpx.Client(base_url=url) as client:
        listed = client.get("/v1/schedules").json()
        assert [s["id"] for s in listed] == [sid] and len(listed[0]["runs"]) == 4 and listed[0]["every"] == "30d"
        assert client.delete(f"/v1/schedules/{sid}").status_code == 204
        assert client.get(f"/v1/schedules/{sid}").status_code == 404
        assert client.get("/v1/studies").json()["total"] == 4  # its studies stay


def test_listing_schedules_takes_the_same_queries_for_one_run_or_many_and_reports_each_runs_drift(tmp_path: Path) -> None:
    """GET /v1/schedules: a run's study, best trials and drift are read for all runs of all schedules
    at once (it was four queries per run, one of them every trial of the run's study), with the
    values each run showed before."""
    from sqlalchemy import event

    app = create_app(settings_for(tmp_path, dispatch_interval_s=60), jobs=FakeJobs())
    store = app.state.ctx.store
    # written before the API (and its dispatcher) starts: finished studies, schedules not due for a year
    later = datetime.now(UTC) + timedelta(days=365)
    ids = [store.schedules.create("local", f"every-{i}", DEFINITION | {"name": f"every-{i}"}, 30 * 86400, 2, later, T0).id for i in range(3)]
    studies = [store.studies.create(f"run-{k}", DEFINITION | {"name": f"run-{k}", "objective": {"metric": "val_accuracy", "mode": "max"}}).id
               for k in range(7)]
    # run k re-measures lr 0.01, run k-1's best while "re" or "first" is; from run 4 on "new" is the
    # best, which no later run trains again (no re-evaluated value, no drift)
    for k, study in enumerate(studies):
        measure(store, study, {"re": (0.01, 0.9 - 0.1 * k), "new": (0.02 + k / 1000, 0.5 + 0.01 * k)} if k else {"first": (0.01, 0.9)})
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        def listed() -> tuple[list[dict[str, Any]], int]:
            statements: list[str] = []

            def count(*args: object) -> None:  # the request's own, in AnyIO's threads (the dispatcher polls from the loop's executor)
                if str(args[2]).lstrip().upper().startswith("SELECT") and threading.current_thread().name.startswith("AnyIO"):
                    statements.append(str(args[2]))

            event.listen(store.db.engine, "before_cursor_execute", count)
            try:
                body = client.get("/v1/schedules").json()
            finally:
                event.remove(store.db.engine, "before_cursor_execute", count)
            return body, len(statements)

        store.schedules.record_run(ids[0], studies[0], None, T0)
        store.schedules.record_run(ids[1], studies[1], studies[0], T0 + timedelta(days=30))
        two, n_two = listed()
        for k in range(2, 7):  # five more runs, over the three schedules
            store.schedules.record_run(ids[k % 3], studies[k], studies[k - 1], T0 + timedelta(days=30 * k))
        many, n_many = listed()
        # the schedules, their runs, then the studies, their best trials (one query per direction) and their measured trials
        assert n_many == n_two <= 6, (n_two, n_many)
        assert [len(s["runs"]) for s in two] == [1, 1, 0] and sorted(len(s["runs"]) for s in many) == [2, 2, 3]
        runs = {r["study_id"]: r for s in many for r in s["runs"]}
        assert runs[studies[0]]["previous_best_value"] is None and runs[studies[0]]["best_value"] == pytest.approx(0.9)
        for k in range(1, 7):
            run = runs[studies[k]]
            re_before, new_before = (0.9, None) if k == 1 else (0.9 - 0.1 * (k - 1), 0.5 + 0.01 * (k - 1))
            previous_best = max(re_before, new_before or 0.0)
            assert run["status"] == "completed" and run["previous_study_id"] == studies[k - 1]
            assert run["previous_best_value"] == pytest.approx(previous_best)
            again = 0.9 - 0.1 * k if previous_best == re_before else None  # lr 0.01 trained again, or "new"'s lr, not
            assert run["reevaluated_value"] == (pytest.approx(again) if again is not None else None), (k, run)
            assert run["drift"] == (pytest.approx(again - previous_best) if again is not None else None)
            assert run["gain"] == (pytest.approx(run["best_value"] - again) if again is not None else None)
        assert sum(runs[s]["reevaluated_value"] is None for s in studies[1:]) == 2  # runs 5 and 6: "new" was the best before them


def test_schedules_are_per_owner(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, auth="required", dispatch_interval_s=60), jobs=FakeJobs())
    tokens = {o: app.state.ctx.store.tokens.create(o)[1] for o in ("alice", "bob")}
    with serve_in_thread(app) as url:
        alice = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['alice']}"})
        bob = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['bob']}"})
        sid = alice.post("/v1/schedules", json={"definition": DEFINITION, "every": "1d"}).json()["id"]
        assert bob.get("/v1/schedules").json() == [] and bob.get(f"/v1/schedules/{sid}").status_code == 404
        assert bob.delete(f"/v1/schedules/{sid}").status_code == 404 and bob.post(f"/v1/schedules/{sid}/pause").status_code == 404
        assert [s["id"] for s in alice.get("/v1/schedules").json()] == [sid]
        assert httpx.get(f"{url}/v1/schedules").status_code == 401


def test_the_cli_manages_schedules_on_caviar_serve_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "monthly.yaml"
    path.write_text(yaml.safe_dump(DEFINITION))
    server = LocalServer(tmp_path / "data", None).start()  # no Ray: the first run's study stays queued

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CAVIAR, "schedule", *args, "--url", server.url], capture_output=True, text=True, timeout=60)

    try:
        made = cli("create", str(path), "--every", "30d", "--top-k", "3")
        assert made.returncode == 0, made.stderr
        sid = made.stdout.split()[1]
        assert "every 30d" in made.stdout
        bad = cli("create", str(path), "--every", "30")
        assert bad.returncode != 0 and "every" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        with server.client() as client:
            wait_until(lambda: client.studies()["total"] == 1, 30, "the first run to start")
        server.stop()
        server.start()
        listed = cli("list")
        assert listed.returncode == 0 and listed.stdout.startswith(f"{sid}  monthly  every 30d") and "runs 1" in listed.stdout, listed.stdout
        assert cli("pause", sid).returncode == 0 and "paused" in cli("list").stdout
        assert cli("delete", sid).returncode == 0 and cli("list").stdout == ""
    finally:
        server.stop()
