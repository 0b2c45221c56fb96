"""The warm driver's hand-over in RayJobs, against a fake Jobs client (the real one: test_warm_driver_e2e)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service import jobs as jobs_module
from service.jobs import JobState, RayJobs
from tests.service.fakes import settings_for


class FakeClient:
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.stopped: list[str] = []

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: dict[str, Any], metadata: dict[str, str]) -> str:
        self.jobs[submission_id] = {"entrypoint": entrypoint, "status": "PENDING", "metadata": metadata, "env": runtime_env}
        return submission_id

    def get_job_status(self, job_id: str) -> str:
        if job_id not in self.jobs:
            raise RuntimeError("no such job")
        return str(self.jobs[job_id]["status"])

    def stop_job(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        self.jobs[job_id]["status"] = "STOPPED"
        return True


@pytest.fixture
def ray_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[RayJobs, FakeClient]:
    j = RayJobs(settings_for(tmp_path))
    client = FakeClient()
    monkeypatch.setattr(j, "_client", lambda: client)
    monkeypatch.setattr(jobs_module, "STANDBY_AFTER_CLAIM_S", 0.0)
    return j, client


def test_a_study_goes_to_the_warm_driver_once_it_runs(ray_jobs: tuple[RayJobs, FakeClient]) -> None:
    j, client = ray_jobs
    j.warm()
    (standby,) = client.jobs
    assert standby.startswith("caviar-standby-") and client.jobs[standby]["entrypoint"].endswith(f"-m service.runner --standby {standby}")
    assert client.jobs[standby]["env"]["env_vars"] == j.env  # the same environment as any study's driver
    j.warm()
    assert len(client.jobs) == 1  # one at a time
    first = j.submit("a" * 16)  # the standby is still starting: a job of the study's own
    assert first.startswith("caviar-aaaa") and client.jobs[first]["metadata"] == {"caviar_study_id": "a" * 16}
    client.jobs[standby]["status"] = "RUNNING"
    assert j.submit("b" * 16) == standby  # up: the study runs in it
    assert j.submit("c" * 16).startswith("caviar-cccc")  # handed out once
    j.warm()
    fresh = [k for k in client.jobs if k.startswith("caviar-standby-") and k != standby]
    assert len(fresh) == 1  # the next one
    j.close()
    assert client.stopped == fresh  # shutting down stops the unclaimed one only


def test_an_ended_warm_driver_is_replaced_and_none_is_kept_when_off(ray_jobs: tuple[RayJobs, FakeClient], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    j, client = ray_jobs
    j.warm()
    (standby,) = client.jobs
    client.jobs[standby]["status"] = JobState.SUCCEEDED.value  # unclaimed for an hour, it ended
    assert j.submit("d" * 16).startswith("caviar-dddd")
    j.warm()
    assert len([k for k in client.jobs if k.startswith("caviar-standby-")]) == 2
    off = RayJobs(settings_for(tmp_path, warm_driver=False))
    other = FakeClient()
    monkeypatch.setattr(off, "_client", lambda: other)
    off.warm()
    assert off.submit("e" * 16).startswith("caviar-eeee") and len(other.jobs) == 1


def test_the_next_warm_driver_waits_until_the_claimed_one_has_started_its_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = RayJobs(settings_for(tmp_path))
    client = FakeClient()
    monkeypatch.setattr(j, "_client", lambda: client)
    j.warm()
    (standby,) = client.jobs
    client.jobs[standby]["status"] = "RUNNING"
    assert j.submit("f" * 16) == standby
    j.warm()
    assert len(client.jobs) == 1  # not within STANDBY_AFTER_CLAIM_S: the study's start-up has the CPU
