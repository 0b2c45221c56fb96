"""The dispatcher against a real SQLite store and a fake of the Ray Jobs side (no Ray here)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from service.api.dispatch import dispatch_once
from service.api.studies import Context
from service.definition import StudyStatus
from service.jobs import JobState, driver_env
from service.local import wait_until
from service.store import DISPATCHER, Store, migrate, now
from tests.service.fakes import FakeJobs, inprocess_api, settings_for


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    settings = settings_for(tmp_path)
    migrate(settings.database_url)
    return Context(settings=settings, store=Store(settings.database_url), jobs=FakeJobs())


def fake(ctx: Context) -> FakeJobs:
    assert isinstance(ctx.jobs, FakeJobs)
    return ctx.jobs


def test_queued_studies_are_submitted_once_with_the_store_location(ctx: Context) -> None:
    sid = ctx.store.studies.create("s", {}).id
    dispatch_once(ctx)
    dispatch_once(ctx)
    assert fake(ctx).submitted == [sid]
    env = driver_env(ctx.settings)  # what RayJobs gives each driver job
    assert env["CAVIAR_DATABASE_URL"] == ctx.store.url and env["CAVIAR_DATA_DIR"] == str(ctx.settings.data_dir)
    assert env["CAVIAR_OPTUNA_STORAGE"] == "journal"  # the driver keeps the sampler's study where the API was told to
    assert float(env["TUNE_GLOBAL_CHECKPOINT_S"]) <= 5  # Tune saves its experiment state often: resumes lose little
    assert ctx.store.studies.get(sid).ray_job_id == f"job-{sid}"  # type: ignore[union-attr]


def test_a_study_cancelled_while_it_is_submitted_has_its_job_stopped(ctx: Context) -> None:
    sid = ctx.store.studies.create("s", {}).id
    fake(ctx).on_submit = lambda study_id: ctx.store.studies.finish(study_id, StudyStatus.CANCELLED)
    dispatch_once(ctx)
    assert fake(ctx).stopped == [f"job-{sid}"]
    assert ctx.store.studies.get(sid).status == "cancelled"  # type: ignore[union-attr]


def test_a_failed_stop_of_a_cancelled_study_is_retried_until_the_job_ends(ctx: Context) -> None:
    sid = ctx.store.studies.create("s", {}).id
    ctx.store.studies.update(sid, ray_job_id="job-x", status="running")
    ctx.store.studies.finish(sid, StudyStatus.CANCELLED)
    fake(ctx).statuses["job-x"] = JobState.RUNNING  # the cancel route's stop request did not get through
    dispatch_once(ctx)
    assert fake(ctx).stopped == ["job-x"]
    dispatch_once(ctx)  # the job has ended: no second stop
    assert fake(ctx).stopped == ["job-x"]
    old = ctx.store.studies.create("old", {}).id
    ctx.store.studies.update(old, ray_job_id="job-old", status="cancelled", finished_at=now() - timedelta(hours=2))
    fake(ctx).statuses["job-old"] = JobState.RUNNING
    dispatch_once(ctx)
    assert "job-old" not in fake(ctx).stopped  # only recent cancellations are re-checked


@pytest.mark.parametrize("job_status", [JobState.FAILED, None])
def test_a_study_whose_driver_died_is_resumed_up_to_max_resumes_then_failed(ctx: Context, job_status: JobState | None) -> None:
    """FAILED with the study unfinished: the driver was killed; None: the Ray cluster forgot the job."""
    sid = ctx.store.studies.create("s", {}).id
    ctx.store.studies.update(sid, ray_job_id="job-y", status="running")
    ctx.store.trials.upsert(sid, "t1", config={}, state="running")
    for resume in range(1, ctx.settings.max_resumes + 1):
        if job_status:
            fake(ctx).statuses[ctx.store.studies.get(sid).ray_job_id] = job_status  # type: ignore[index,union-attr]
        else:
            fake(ctx).statuses.pop(ctx.store.studies.get(sid).ray_job_id, None)  # type: ignore[arg-type,union-attr]
        dispatch_once(ctx)  # notices the dead job
        row = ctx.store.studies.get(sid)
        assert row.status == "running" and row.resumes == resume and row.ray_job_id is None  # type: ignore[union-attr]
        dispatch_once(ctx)  # resubmits: the driver resumes from Tune's saved state
        assert ctx.store.studies.get(sid).ray_job_id == f"job-{sid}"  # type: ignore[union-attr]
        assert ctx.store.trials.for_study(sid)[0].state == "running"  # the resumed driver owns its trials
    assert fake(ctx).submitted == [sid] * ctx.settings.max_resumes
    if job_status:
        fake(ctx).statuses[f"job-{sid}"] = job_status
    else:
        fake(ctx).statuses.clear()
    dispatch_once(ctx)
    row = ctx.store.studies.get(sid)
    assert row.status == "failed" and f"after {ctx.settings.max_resumes} resumes" in row.error  # type: ignore[union-attr,operator]
    dispatch_once(ctx)  # its trials have no process behind them any more: zombies
    (trial,) = ctx.store.trials.for_study(sid)
    assert trial.state == "failed" and "its study is failed" in trial.error  # type: ignore[operator]


@pytest.mark.parametrize("job_status", [JobState.SUCCEEDED, JobState.STOPPED])
def test_a_study_whose_job_ended_without_finishing_it_is_failed(ctx: Context, job_status: JobState) -> None:
    """STOPPED by someone outside Caviar (ray job stop): not resumed against their will."""
    sid = ctx.store.studies.create("s", {}).id
    ctx.store.studies.update(sid, ray_job_id="job-y", status="running")
    fake(ctx).statuses["job-y"] = job_status
    dispatch_once(ctx)
    row = ctx.store.studies.get(sid)
    assert row.status == "failed" and row.resumes == 0  # type: ignore[union-attr]
    assert ("stopped outside Caviar" if job_status == "STOPPED" else "ended as SUCCEEDED") in row.error  # type: ignore[union-attr,operator]


def test_zombie_trials_of_finished_studies_are_failed_even_while_ray_is_down(ctx: Context) -> None:
    sid = ctx.store.studies.create("s", {}).id
    ctx.store.trials.upsert(sid, "done", config={}, state="completed")
    ctx.store.trials.upsert(sid, "live", config={}, state="running")
    ctx.store.studies.finish(sid, StudyStatus.CANCELLED)
    live = ctx.store.studies.create("live", {}).id
    ctx.store.studies.update(live, ray_job_id="job-live", status="running")
    ctx.store.trials.upsert(live, "t", config={}, state="running")

    def down(job_id: str) -> str:
        raise ConnectionError("Ray is down")

    ctx.jobs.status = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        dispatch_once(ctx)
    states = {t.trial_id: (t.state, t.error) for t in ctx.store.trials.for_study(sid)}
    assert states["done"] == ("completed", None)
    assert states["live"][0] == "failed" and "cancelled" in states["live"][1]  # type: ignore[operator]
    assert ctx.store.trials.for_study(live)[0].state == "running"  # a running study's trials are its driver's business


def test_a_running_study_with_a_live_job_is_left_alone(ctx: Context) -> None:
    sid = ctx.store.studies.create("s", {}).id
    ctx.store.studies.update(sid, ray_job_id="job-z", status="running")
    fake(ctx).statuses["job-z"] = JobState.RUNNING  # type: ignore[attr-defined]
    dispatch_once(ctx)
    assert ctx.store.studies.get(sid).status == "running"  # type: ignore[union-attr]


@pytest.mark.parametrize(("error", "rc", "status"), [(ConnectionError("Failed to connect to Ray cluster"), 3, "running"),
                                                     (ValueError("a bug"), 1, "failed")])
def test_a_driver_that_loses_the_cluster_leaves_the_study_to_be_resumed(
    ctx: Context, monkeypatch: pytest.MonkeyPatch, error: Exception, rc: int, status: str
) -> None:
    from service.runner import __main__ as runner_main
    from service.runner import tuner

    sid = ctx.store.studies.create("s", {"name": "s", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"}, "search_space": "seven_key"}).id
    monkeypatch.setenv("CAVIAR_DATABASE_URL", ctx.store.url)  # the driver's settings come from its job's environment

    def boom(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(tuner, "run_study", boom)
    monkeypatch.setattr(runner_main, "freeze_imports", lambda: None)  # a driver's, not pytest's objects
    assert runner_main.main(sid) == rc
    assert ctx.store.studies.get(sid).status == status  # type: ignore[union-attr]


def test_a_driver_runs_its_study_only_when_the_store_records_its_job(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that lost the race to be recorded (and that its dispatcher could not stop) ends without
    touching the study; the recorded one runs it."""
    from service.runner import __main__ as runner_main
    from service.runner import tuner

    sid = ctx.store.studies.create("s", {"name": "s", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"}, "search_space": "seven_key"}).id
    monkeypatch.setenv("CAVIAR_DATABASE_URL", ctx.store.url)
    ran: list[str] = []
    monkeypatch.setattr(tuner, "run_study", lambda study_id, *a, **k: ran.append(study_id) or {})
    monkeypatch.setattr(runner_main, "freeze_imports", lambda: None)
    monkeypatch.setattr(runner_main, "JOB_RECORD_WAIT_S", 0.3)
    assert runner_main.main(sid, "job-loser") == 0  # no job recorded within the wait: nothing run
    assert ran == [] and ctx.store.studies.get(sid).status == "queued"  # type: ignore[union-attr]
    # a driver that starts before its dispatcher has recorded its job waits for the record
    monkeypatch.setattr(runner_main, "JOB_RECORD_WAIT_S", 30)
    threading.Timer(0.3, lambda: ctx.store.studies.update(sid, ray_job_id="job-early")).start()
    assert runner_main.main(sid, "job-early") == 1 and ran == [sid]  # it ran (no trial here: failed as measuring nothing)
    ran.clear()
    ctx.store.studies.update(sid, status="queued", error=None, finished_at=None)
    ctx.store.studies.update(sid, ray_job_id="job-winner")
    assert runner_main.main(sid, "job-loser") == 0
    assert ran == [] and ctx.store.studies.get(sid).status == "queued"  # type: ignore[union-attr]
    assert runner_main.main(sid, "job-winner") == 1  # the recorded job runs it (no trial here: it fails as measuring nothing)
    assert ran == [sid] and ctx.store.studies.get(sid).error == "no trial ran"  # type: ignore[union-attr]


def test_a_submitted_study_is_handed_to_ray_at_once_not_at_the_next_tick(tmp_path: Path) -> None:
    definition = {"name": "now", "trainable": "busy_work", "dataset": {"name": "digits"},
                  "search_space": {"x": {"type": "float", "low": 0, "high": 1}}, "budget": {"num_trials": 1}}
    # the dispatcher's tick is a minute away: only the submission's wake-up can hand the study to Ray in time
    with inprocess_api(tmp_path, dispatch_interval_s=60) as (client, jobs):
        first = client.submit(definition)
        wait_until(lambda: jobs.submitted, 10, "the first study to be submitted to Ray")
        # the loop has made its pass and now waits out its tick: only a wake-up hands the next one over
        second = client.submit(definition)
        wait_until(lambda: len(jobs.submitted) == 2, 10, "the second study to be submitted to Ray")
        assert jobs.submitted == [first["id"], second["id"]]


def test_a_warm_driver_is_asked_for_only_while_no_study_runs_or_starts(ctx: Context) -> None:
    dispatch_once(ctx)
    assert fake(ctx).warmed == 1  # idle: one is kept ready
    sid = ctx.store.studies.create("s", {}).id
    dispatch_once(ctx)
    # handed to a driver that has not marked it running yet (a warm one still importing, say): the
    # next warm driver's imports and its trial processes' PyTorch would take the CPU from its start
    assert fake(ctx).submitted == [sid] and fake(ctx).warmed == 1
    ctx.store.studies.update(sid, status=StudyStatus.RUNNING.value)
    dispatch_once(ctx)
    assert fake(ctx).warmed == 1  # a study runs: its trials keep the CPU
    ctx.store.studies.finish(sid, StudyStatus.COMPLETED)
    dispatch_once(ctx)
    assert fake(ctx).warmed == 2


def test_two_dispatchers_hand_a_study_to_ray_once(ctx: Context) -> None:
    """Two API processes' dispatchers (one whose lease lapsed mid-tick) both find a study without a
    job: the one that records its job second stops the job it started."""
    other = Context(settings=ctx.settings, store=Store(ctx.settings.database_url), jobs=FakeJobs(prefix="other"))
    fake(other).statuses = fake(ctx).statuses  # one Ray cluster: each sees the other's jobs
    sid = ctx.store.studies.create("s", {}).id
    fake(ctx).on_submit = lambda study_id: dispatch_once(other)  # the other dispatcher runs while this one submits
    dispatch_once(ctx)
    assert fake(other).submitted == [sid] and fake(ctx).submitted == [sid]
    assert ctx.store.studies.get(sid).ray_job_id == f"other-{sid}"  # type: ignore[union-attr]  # recorded first
    assert fake(ctx).stopped == [f"job-{sid}"] and fake(other).stopped == []  # the loser stops its own job, not the winner's


def test_one_of_two_api_processes_dispatches_and_the_other_takes_over_when_it_stops(tmp_path: Path) -> None:
    """Two APIs over one store (as `caviar serve --workers 2` runs them): only the lease holder hands
    studies to Ray, a study stored through the other is handed over within a moment (not at the
    minute-long tick), and when the holder stops, the other takes over."""
    definition = {"name": "two", "trainable": "busy_work", "dataset": {"name": "digits"},
                  "search_space": {"x": {"type": "float", "low": 0, "high": 1}}, "budget": {"num_trials": 1}}
    store = Store(settings_for(tmp_path).database_url)
    jobs_a, jobs_b = FakeJobs(), FakeJobs()
    jobs_b.statuses = jobs_a.statuses  # one Ray cluster: each sees the other's jobs
    with contextlib.ExitStack() as first_api:
        client_a, _ = first_api.enter_context(inprocess_api(tmp_path, jobs_a, dispatch_interval_s=60))
        wait_until(lambda: store.leases.holder(DISPATCHER), 10, "a dispatcher to hold the lease")
        with inprocess_api(tmp_path, jobs_b, dispatch_interval_s=0.2) as (client_b, _):
            sid = client_b.submit(definition)["id"]  # stored by b, which does not dispatch
            wait_until(lambda: jobs_a.submitted, 5, "the lease holder (a) to hand b's study to Ray")
            assert jobs_a.submitted == [sid] and jobs_b.submitted == []
            holder = store.leases.holder(DISPATCHER)
            first_api.close()  # a stops cleanly: it releases the lease
            wait_until(lambda: (h := store.leases.holder(DISPATCHER)) and h[0] != holder[0], 5,  # type: ignore[index]
                       "b to take the lease over")
            sid2 = client_b.submit(definition)["id"]
            wait_until(lambda: jobs_b.submitted, 5, "b to hand its study to Ray")
            assert jobs_b.submitted == [sid2] and jobs_a.submitted == [sid]
            assert jobs_b.warmed == 0  # not while a study it handed over starts
            for done in (sid, sid2):
                store.studies.finish(done, StudyStatus.COMPLETED)
            wait_until(lambda: jobs_b.warmed >= 1 and client_a, 5, "the new holder to keep a warm driver ready")


def test_a_dispatcher_that_loses_the_lease_stops_dispatching_and_its_warm_driver(ctx: Context) -> None:
    """Its lease lapsed (a stall) and another process took it: at its next tick it hands nothing to
    Ray and stops the warm driver it kept, so that only the new holder's waits."""
    from service.api.dispatch import _tick

    assert _tick(ctx, "a", False) == (True, True)  # a leads, and dispatched
    assert fake(ctx).warmed == 1 and fake(ctx).closed == 0
    ctx.store.leases.release(DISPATCHER, "a")  # as if it lapsed...
    assert ctx.store.leases.hold(DISPATCHER, "b", 30)  # ...and b took it over
    sid = ctx.store.studies.create("s", {}).id
    assert _tick(ctx, "a", True) == (False, False)
    assert fake(ctx).closed == 1 and fake(ctx).submitted == [] and fake(ctx).warmed == 1
    assert ctx.store.studies.get(sid).ray_job_id is None  # type: ignore[union-attr]  # b's to hand over


def test_a_lease_held_by_a_dead_process_of_this_host_is_taken_over_at_once(ctx: Context) -> None:
    """An API restarted after a crash (or a --workers worker started again) does not wait for the dead
    one's lease to lapse; a holder that may be alive (this process, another host or pid namespace) is
    waited for."""
    from service.api.dispatch import _tick, gone, holder_name

    dead = subprocess.run([sys.executable, "-c", "from service.api.dispatch import holder_name; print(holder_name())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert gone(dead)  # that process has exited
    assert not gone(holder_name())  # another app of this process: alive
    host, ns, pid, incarnation, app = dead.rsplit(":", 4)
    assert gone(f"{host}:{ns}:{os.getpid()}:{incarnation}:{app}")  # this pid, an earlier incarnation (a container's pid 1)
    assert not gone(f"other-host:{ns}:{pid}:{incarnation}:{app}") and not gone(f"{host}:123:{pid}:{incarnation}:{app}")
    twin = f"{host.rsplit('.', 1)[0]}.000000000000"  # same hostname, another machine (or boot): may be alive
    assert not gone(f"{twin}:{ns}:{pid}:{incarnation}:{app}") and not gone(f"{twin}:{ns}:{os.getpid()}:{incarnation}:{app}")
    assert ctx.store.leases.hold(DISPATCHER, dead, 600)  # the dead one's lease has ten minutes left
    assert _tick(ctx, holder_name(), False)[0]  # taken over at once
    other = f"other-host:{ns}:{pid}:{incarnation}:{app}"
    ctx.store.leases.release(DISPATCHER, ctx.store.leases.holder(DISPATCHER)[0])  # type: ignore[index]
    assert ctx.store.leases.hold(DISPATCHER, other, 600)
    assert _tick(ctx, holder_name(), False) == (False, False)  # may be alive: waited for


def test_a_process_that_does_not_lead_reads_the_lease_and_writes_nothing(ctx: Context) -> None:
    """Every API process ticks; only the holder writes (its renewal). The others read who holds it, so
    N processes do not queue N writes a tick behind the drivers' on SQLite's one writer."""
    from sqlalchemy import event

    from service.api.dispatch import _tick

    writes: list[str] = []
    engine = ctx.store.studies.db.engine

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            writes.append(statement)

    assert ctx.store.leases.hold(DISPATCHER, "other-host:1:1:1:1", 30)
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(3):
            assert _tick(ctx, "b", False) == (False, False)
        assert writes == []
        ctx.store.leases.release(DISPATCHER, "other-host:1:1:1:1")  # a clean stop: the next tick takes it
        assert _tick(ctx, "b", False)[0] and any("caviar_leases" in w for w in writes)
        writes.clear()
        assert _tick(ctx, "b", True)[0] and sum("caviar_leases" in w for w in writes) == 1  # the holder renews: one write
    finally:
        event.remove(engine, "before_cursor_execute", count)
