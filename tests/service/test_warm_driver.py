"""The warm driver's hand-over in RayJobs, against a fake Jobs client (the real one: test_warm_driver_e2e)."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service import jobs as jobs_module
from service.jobs import JobState, RayJobs
from service.runner import warm
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
    # its worker processes warm themselves as they start (settings.warm_trials), with the hook Ray can import
    assert client.jobs[standby]["env"]["worker_process_setup_hook"] == jobs_module.TRIAL_SETUP_HOOK
    module, _, name = jobs_module.TRIAL_SETUP_HOOK.rpartition(".")
    assert getattr(importlib.import_module(module), name) is warm.setup
    j.warm()
    assert len(client.jobs) == 1  # one at a time
    assert j.submit("a" * 16) == standby  # still starting (PENDING): further along than a new job, the study goes to it
    first = j.submit("b" * 16)  # handed out once: the next study gets a job of its own
    assert first.startswith("caviar-bbbb") and client.jobs[first]["metadata"] == {"caviar_study_id": "b" * 16}
    assert client.jobs[first]["env"] == {"env_vars": j.env}  # no processes are started ahead for it: no hook
    def newest() -> str:
        return [k for k in client.jobs if k.startswith("caviar-standby-")][-1]

    j.warm()
    second = newest()
    assert second != standby  # the next one
    client.jobs[second]["status"] = "RUNNING"
    assert j.submit("c" * 16) == second  # up: the study runs in it
    j.warm()
    third = newest()
    client.jobs[third]["status"] = "FAILED"  # a warm driver that failed to start is not handed a study
    assert j.submit("d" * 16).startswith("caviar-dddd")
    j.warm()
    fresh = [newest()]
    assert fresh[0] not in (standby, second, third)
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


def test_warm_trials_off_starts_no_trial_process_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = RayJobs(settings_for(tmp_path, warm_trials=False))
    client = FakeClient()
    monkeypatch.setattr(j, "_client", lambda: client)
    j.warm()
    (standby,) = client.jobs
    assert client.jobs[standby]["env"] == {"env_vars": j.env} and j.env["CAVIAR_WARM_TRIALS"] == "false"


def test_the_setup_hook_never_fails_a_worker_and_each_node_gets_one_process_per_cpu(monkeypatch: pytest.MonkeyPatch,
                                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "trainables.engine", None)  # its import raises ImportError
    monkeypatch.setattr(warm, "freeze_imports", lambda: None)  # not pytest's own objects (the next test checks the freeze)
    with caplog.at_level(logging.WARNING, logger="caviar.warm"):
        warm.setup()  # a worker whose hook raised would not start: it logs instead
    assert "warming this trial process failed" in caplog.text
    assert [warm.per_node(r) for r in ({"CPU": 2.0}, {"CPU": 0.0, "GPU": 1.0}, {}, {"CPU": 64.0}, {"CPU": 3.5})] == [2, 0, 0, warm.MAX_PER_NODE, 3]


def test_a_warm_trial_process_freezes_its_imports_out_of_the_collector() -> None:
    """After the setup hook, PyTorch's and the trainables' objects sit in the permanent generation: a
    trial's full collections walk what the trial allocates (service.runner.freeze_imports)."""
    code = ("import gc; from service.runner import warm; warm.setup(); import torch, trainables.engine; "
            "print(gc.get_freeze_count(), len(gc.get_objects()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    frozen, tracked = map(int, out.stdout.split())
    assert frozen > 100_000 and tracked < frozen // 20, out.stdout
