"""The dispatcher loop against a real SQLite store and a fake of the Ray Jobs side (no Ray here)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from service import studies
from service.schemas import StudyStatus
from service.settings import Settings
from service.store import Store, migrate, now


class FakeJobs:
    """Records calls; job statuses are whatever the test sets."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, dict[str, str]]] = []
        self.stopped: list[str] = []
        self.statuses: dict[str, str] = {}
        self.on_submit = lambda study_id: None

    def submit(self, study_id: str, env: dict[str, str]) -> str:
        self.submitted.append((study_id, env))
        self.on_submit(study_id)
        job = f"job-{study_id}"
        self.statuses[job] = "PENDING"
        return job

    def stop(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        self.statuses[job_id] = "STOPPED"
        return True

    def status(self, job_id: str) -> str | None:
        return self.statuses.get(job_id)


@pytest.fixture
def ctx(tmp_path: Path) -> studies.Context:
    url = f"sqlite:///{tmp_path / 'caviar.db'}"
    migrate(url)
    settings = Settings(data_dir=tmp_path, database_url=url, ray_address="http://ray", dashboard_url="http://ray")
    return studies.Context(settings=settings, store=Store(url), ray=FakeJobs())  # type: ignore[arg-type]


def test_queued_studies_are_submitted_once_with_the_store_location(ctx: studies.Context) -> None:
    sid = ctx.store.create_study("s", {}).id
    studies.dispatch_once(ctx)
    studies.dispatch_once(ctx)
    fake: FakeJobs = ctx.ray  # type: ignore[assignment]
    assert [s for s, _ in fake.submitted] == [sid]
    env = fake.submitted[0][1]
    assert env["CAVIAR_DATABASE_URL"] == ctx.store.url and env["CAVIAR_DATA_DIR"] == str(ctx.settings.data_dir)
    assert env["CAVIAR_OPTUNA_STORAGE"] == "journal"  # the driver keeps the sampler's study where the API was told to
    assert float(env["TUNE_GLOBAL_CHECKPOINT_S"]) <= 5  # Tune saves its experiment state often: resumes lose little
    assert ctx.store.get_study(sid).ray_job_id == f"job-{sid}"  # type: ignore[union-attr]


def test_a_study_cancelled_while_it_is_submitted_has_its_job_stopped(ctx: studies.Context) -> None:
    sid = ctx.store.create_study("s", {}).id
    fake: FakeJobs = ctx.ray  # type: ignore[assignment]
    fake.on_submit = lambda study_id: ctx.store.finish_study(study_id, StudyStatus.CANCELLED)
    studies.dispatch_once(ctx)
    assert fake.stopped == [f"job-{sid}"]
    assert ctx.store.get_study(sid).status == "cancelled"  # type: ignore[union-attr]


def test_a_failed_stop_of_a_cancelled_study_is_retried_until_the_job_ends(ctx: studies.Context) -> None:
    sid = ctx.store.create_study("s", {}).id
    ctx.store.update_study(sid, ray_job_id="job-x", status="running")
    ctx.store.finish_study(sid, StudyStatus.CANCELLED)
    fake: FakeJobs = ctx.ray  # type: ignore[assignment]
    fake.statuses["job-x"] = "RUNNING"  # the cancel route's stop request did not get through
    studies.dispatch_once(ctx)
    assert fake.stopped == ["job-x"]
    studies.dispatch_once(ctx)  # the job has ended: no second stop
    assert fake.stopped == ["job-x"]
    old = ctx.store.create_study("old", {}).id
    ctx.store.update_study(old, ray_job_id="job-old", status="cancelled", finished_at=now() - timedelta(hours=2))
    fake.statuses["job-old"] = "RUNNING"
    studies.dispatch_once(ctx)
    assert "job-old" not in fake.stopped  # only recent cancellations are re-checked


@pytest.mark.parametrize("job_status", ["FAILED", None])
def test_a_study_whose_driver_died_is_resumed_up_to_max_resumes_then_failed(ctx: studies.Context, job_status: str | None) -> None:
    """FAILED with the study unfinished: the driver was killed; None: the Ray cluster forgot the job."""
    sid = ctx.store.create_study("s", {}).id
    ctx.store.update_study(sid, ray_job_id="job-y", status="running")
    ctx.store.upsert_trial(sid, "t1", config={}, state="running")
    fake: FakeJobs = ctx.ray  # type: ignore[assignment]
    for resume in range(1, ctx.settings.max_resumes + 1):
        if job_status:
            fake.statuses[ctx.store.get_study(sid).ray_job_id] = job_status  # type: ignore[index,union-attr]
        else:
            fake.statuses.pop(ctx.store.get_study(sid).ray_job_id, None)  # type: ignore[arg-type,union-attr]
        studies.dispatch_once(ctx)  # notices the dead job
        row = ctx.store.get_study(sid)
        assert row.status == "running" and row.resumes == resume and row.ray_job_id is None  # type: ignore[union-attr]
        studies.dispatch_once(ctx)  # resubmits: the driver resumes from Tune's saved state
        assert ctx.store.get_study(sid).ray_job_id == f"job-{sid}"  # type: ignore[union-attr]
        assert ctx.store.trials(sid)[0].state == "running"  # the resumed driver owns its trials
    assert [s for s, _ in fake.submitted] == [sid] * ctx.settings.max_resumes
    if job_status:
        fake.statuses[f"job-{sid}"] = job_status
    else:
        fake.statuses.clear()
    studies.dispatch_once(ctx)
    row = ctx.store.get_study(sid)
    assert row.status == "failed" and f"after {ctx.settings.max_resumes} resumes" in row.error  # type: ignore[union-attr,operator]
    studies.dispatch_once(ctx)  # its trials have no process behind them any more: zombies
    (trial,) = ctx.store.trials(sid)
    assert trial.state == "failed" and "its study is failed" in trial.error  # type: ignore[operator]


@pytest.mark.parametrize("job_status", ["SUCCEEDED", "STOPPED"])
def test_a_study_whose_job_ended_without_finishing_it_is_failed(ctx: studies.Context, job_status: str) -> None:
    """STOPPED by someone outside Caviar (ray job stop): not resumed against their will."""
    sid = ctx.store.create_study("s", {}).id
    ctx.store.update_study(sid, ray_job_id="job-y", status="running")
    ctx.ray.statuses["job-y"] = job_status  # type: ignore[attr-defined]
    studies.dispatch_once(ctx)
    row = ctx.store.get_study(sid)
    assert row.status == "failed" and row.resumes == 0  # type: ignore[union-attr]
    assert ("stopped outside Caviar" if job_status == "STOPPED" else "ended as SUCCEEDED") in row.error  # type: ignore[union-attr,operator]


def test_zombie_trials_of_finished_studies_are_failed_even_while_ray_is_down(ctx: studies.Context) -> None:
    sid = ctx.store.create_study("s", {}).id
    ctx.store.upsert_trial(sid, "done", config={}, state="completed")
    ctx.store.upsert_trial(sid, "live", config={}, state="running")
    ctx.store.finish_study(sid, StudyStatus.CANCELLED)
    live = ctx.store.create_study("live", {}).id
    ctx.store.update_study(live, ray_job_id="job-live", status="running")
    ctx.store.upsert_trial(live, "t", config={}, state="running")

    def down(job_id: str) -> str:
        raise ConnectionError("Ray is down")

    ctx.ray.status = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        studies.dispatch_once(ctx)
    states = {t.trial_id: (t.state, t.error) for t in ctx.store.trials(sid)}
    assert states["done"] == ("completed", None)
    assert states["live"][0] == "failed" and "cancelled" in states["live"][1]  # type: ignore[operator]
    assert ctx.store.trials(live)[0].state == "running"  # a running study's trials are its driver's business


def test_a_running_study_with_a_live_job_is_left_alone(ctx: studies.Context) -> None:
    sid = ctx.store.create_study("s", {}).id
    ctx.store.update_study(sid, ray_job_id="job-z", status="running")
    ctx.ray.statuses["job-z"] = "RUNNING"  # type: ignore[attr-defined]
    studies.dispatch_once(ctx)
    assert ctx.store.get_study(sid).status == "running"  # type: ignore[union-attr]


@pytest.mark.parametrize(("error", "rc", "status"), [(ConnectionError("Failed to connect to Ray cluster"), 3, "running"),
                                                     (ValueError("a bug"), 1, "failed")])
def test_a_driver_that_loses_the_cluster_leaves_the_study_to_be_resumed(
    ctx: studies.Context, monkeypatch: pytest.MonkeyPatch, error: Exception, rc: int, status: str
) -> None:
    from service import driver, ray_adapter

    sid = ctx.store.create_study("s", {"name": "s", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"}, "search_space": "seven_key"}).id
    monkeypatch.setenv("CAVIAR_DATABASE_URL", ctx.store.url)

    def boom(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(ray_adapter, "run_tune", boom)
    assert driver.main(sid) == rc
    assert ctx.store.get_study(sid).status == status  # type: ignore[union-attr]


def test_a_submitted_study_is_handed_to_ray_at_once_not_at_the_next_tick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import time

    import httpx

    from service import app as app_module

    monkeypatch.setattr(app_module, "DISPATCH_INTERVAL_S", 60.0)  # the next tick is a minute away
    url = f"sqlite:///{tmp_path / 'caviar.db'}"
    (tmp_path / "datasets").mkdir()
    settings = Settings(data_dir=tmp_path, database_url=url, ray_address="http://ray", dashboard_url="http://ray")
    app = app_module.create_app(settings)
    fake = FakeJobs()
    app.state.ctx.ray = fake
    definition = {"name": "now", "trainable": "busy_work", "dataset": {"name": "digits"},
                  "search_space": {"x": {"type": "float", "low": 0, "high": 1}}, "budget": {"num_trials": 1}}

    async def main() -> str:
        async with app.router.lifespan_context(app):  # starts the dispatcher loop
            await asyncio.sleep(0.5)  # its first pass (nothing queued); then it waits
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                r = await client.post("/v1/studies", json=definition)
            assert r.status_code == 201, r.text
            deadline = time.monotonic() + 5
            while not fake.submitted and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return str(r.json()["id"])

    sid = asyncio.run(main())
    assert [s for s, _ in fake.submitted] == [sid]


def test_a_bad_optuna_storage_setting_names_the_variable_and_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAVIAR_OPTUNA_STORAGE", "redis")
    with pytest.raises(SystemExit, match="CAVIAR_OPTUNA_STORAGE must be one of journal, database, not 'redis'"):
        Settings.from_env()
    monkeypatch.setenv("CAVIAR_OPTUNA_STORAGE", "database")
    assert Settings.from_env().optuna_storage == "database"
