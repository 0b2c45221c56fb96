"""The warm driver on the session's Ray head through `caviar serve`: a study submitted when a warm
driver is up runs in it (one Ray job per study still, its id in the study), the job's log says so,
the trial processes it started ahead (before the study existed) run the trials, and the next warm
driver follows."""

from __future__ import annotations

from typing import Any

import pytest

from service.local import LocalHead, LocalServer, wait_until

QUICK = {"name": "warm", "trainable": "busy_work", "dataset": {"name": "digits"},
         "search_space": {"x": {"type": "float", "low": 0, "high": 1}, "y": {"type": "float", "low": 0, "high": 1}},
         "fixed": {"epochs": 2, "seconds_per_epoch": 0.01}, "scheduler": {"type": "none"},
         "sampler": {"type": "random", "seed": 1}, "budget": {"num_trials": 3, "max_concurrent_trials": 2}}


def standbys(head: LocalHead) -> list[Any]:
    return [j for j in head.jobs()._client().list_jobs() if (j.metadata or {}).get("caviar_standby") == "1"]


def idle_workers(head: LocalHead, submission_id: str) -> set[int]:
    """The live worker processes, not drivers and holding no actor (the job's supervisor is one),
    launched since that submission's job started. (Ray's state API does not name a worker's job.)"""
    from ray.util.state import list_actors, list_workers

    started_ms = head.jobs()._client().get_job_info(submission_id).start_time
    workers = list_workers(address=head.dashboard, filters=[("worker_type", "=", "WORKER"), ("is_alive", "=", "True")], detail=True,
                           limit=1000, raise_on_missing_output=False)
    busy = {a.pid for a in list_actors(address=head.dashboard, filters=[("state", "=", "ALIVE")], detail=True, limit=1000,
                                       raise_on_missing_output=False)}
    return {w.pid for w in workers if (w.worker_launch_time_ms or 0) >= started_ms} - busy


def trial_pids(head: LocalHead, submission_id: str) -> set[int]:
    """The processes Tune's trial actors of that job ran in."""
    from ray.util.state import list_actors

    job_id = head.jobs()._client().get_job_info(submission_id).job_id
    actors = list_actors(address=head.dashboard, filters=[("job_id", "=", job_id)], detail=True, limit=1000, raise_on_missing_output=False)
    return {a.pid for a in actors if a.pid}


def ready(head: LocalHead) -> str | None:
    """The newest warm driver, when it is up, has said so in its log and runs no study yet. (An API
    killed earlier in the session leaves its own behind until its idle timeout: the newest is the
    one the API now up started.)"""
    client = head.jobs()._client()
    newest = max(standbys(head), key=lambda j: j.start_time or 0, default=None)
    if newest is not None and str(getattr(newest.status, "value", newest.status)) == "RUNNING":
        logs = client.get_job_logs(newest.submission_id)
        if "ready" in logs and "runs study" not in logs:
            return str(newest.submission_id)
    return None


@pytest.mark.ray
def test_a_study_runs_in_the_warm_driver_and_the_next_one_is_started(api: LocalServer, ray_head: LocalHead) -> None:
    standby = wait_until(lambda: ready(ray_head), 120, "a warm driver to be up", interval=0.5)
    # its trial processes were started ahead, one per CPU of the head (2), before any study exists
    warm = wait_until(lambda: len(w := idle_workers(ray_head, standby)) >= 2 and w, 60, "the warm trial processes", interval=0.5)
    wait_until(lambda: f"warm driver {standby} asked Ray for 2 trial processes ahead" in ray_head.jobs()._client().get_job_logs(standby),
               30, "the warm driver to say so", interval=0.5)
    with api.client() as client:
        sid = client.submit(QUICK)["id"]
        s = wait_until(lambda: (s := client.study(sid))["status"] in ("completed", "failed", "cancelled") and s, 120,
                       f"study {sid} to finish", interval=0.25)
        assert s["status"] == "completed", s["error"]
        assert s["ray_job_id"] == standby and s["dashboard_url"].endswith(f"/#/jobs/{standby}")
        logs = ray_head.jobs()._client().get_job_logs(standby)
        assert f"warm driver {standby} runs study {sid}" in logs
        # Tune's trial actors ran in the processes started before the study was submitted
        ran = trial_pids(ray_head, standby)
        assert ran and ran <= warm, (ran, warm)
        # one study, one job: it ends with its study
        ended = wait_until(lambda: (state := ray_head.jobs().status(standby)) is not None and state.terminal and state, 60,
                           "the warm driver's job to end", interval=0.25)
        assert ended.value == "SUCCEEDED"
        # the next one comes up for the next study (not within 5 s of the claim: the study's start-up had the CPU)
        after = wait_until(lambda: (r := ready(ray_head)) != standby and r, 120, "the next warm driver", interval=0.5)
        cancel = client.submit({**QUICK, "name": "warm-cancel", "fixed": {"epochs": 200, "seconds_per_epoch": 0.05}})["id"]
        wait_until(lambda: client.study(cancel)["trial_counts"]["running"] > 0, 120, "its trials to run", interval=0.25)
        assert client.study(cancel)["ray_job_id"] == after
        assert client.cancel(cancel)["status"] == "cancelled"
        wait_until(lambda: ray_head.jobs().status(after) is not None and ray_head.jobs().status(after).terminal, 60,  # type: ignore[union-attr]
                   "the cancelled study's warm driver to stop", interval=0.5)
