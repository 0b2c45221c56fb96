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
    assert fake.submitted[0][1] == {"CAVIAR_DATABASE_URL": ctx.store.url, "CAVIAR_DATA_DIR": str(ctx.settings.data_dir)}
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


@pytest.mark.parametrize("job_status", ["FAILED", "SUCCEEDED", "STOPPED", None])
def test_a_running_study_whose_job_ended_is_marked_failed(ctx: studies.Context, job_status: str | None) -> None:
    sid = ctx.store.create_study("s", {}).id
    ctx.store.update_study(sid, ray_job_id="job-y", status="running")
    fake: FakeJobs = ctx.ray  # type: ignore[assignment]
    if job_status:
        fake.statuses["job-y"] = job_status
    studies.dispatch_once(ctx)
    row = ctx.store.get_study(sid)
    assert row.status == "failed"  # type: ignore[union-attr]
    assert f"ended as {job_status or 'unknown'}" in row.error  # type: ignore[union-attr,operator]


def test_a_running_study_with_a_live_job_is_left_alone(ctx: studies.Context) -> None:
    sid = ctx.store.create_study("s", {}).id
    ctx.store.update_study(sid, ray_job_id="job-z", status="running")
    ctx.ray.statuses["job-z"] = "RUNNING"  # type: ignore[attr-defined]
    studies.dispatch_once(ctx)
    assert ctx.store.get_study(sid).status == "running"  # type: ignore[union-attr]
