"""The API process's only door to Ray: studies as Ray jobs, through Ray's public Jobs and State APIs.

``Jobs`` is the small protocol the rest of the API depends on (tests use a fake); ``RayJobs``
implements it against a cluster's dashboard address. This module is also the only place that
builds a study driver's environment (``driver_env``): the driver builds its ``Settings`` from it.

A warm driver (``settings.warm_driver``): starting a Ray job costs seconds (the job supervisor, a
Python process, the imports of Ray, Tune, Optuna and PyTorch, connecting to the cluster).
``RayJobs`` keeps one job started ahead, ``python -m service.runner
--standby JOB_ID``, that does all of that and then waits for a study whose ``ray_job_id`` is its
own. ``submit`` hands the next study to it when it is up (the dispatcher stores the job id, the
standby sees it in the store and runs the study), so each study is still one Ray job, visible in
the Ray dashboard under that id. The dispatcher asks for the next one (``warm``) while no study
runs, so a warm driver's own start-up never takes CPU from a running study's trials: it serves a
study submitted to an idle service (a CI pipeline, a person at the CLI), and studies submitted
while others run start as before.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import threading
import time
from enum import StrEnum
from typing import Any, Protocol

from service.settings import Settings

log = logging.getLogger("caviar.jobs")
# Ray's modules import each other in circles: two threads importing them at once (the dispatcher's
# and a request's, at an API's start) can each see the other's half-made module, and the failed
# import leaves ``ray`` broken in that process for good. Every import of Ray here takes this lock.
_RAY_IMPORT = threading.Lock()
# Ray runs this in each worker process of the warm driver's job as it starts (settings.warm_trials)
TRIAL_SETUP_HOOK = "service.runner.warm.setup"
STANDBY_AFTER_CLAIM_S = 5.0  # the next warm driver starts this long after one was claimed: not while its study starts


class JobState(StrEnum):
    """A Ray job's status, as Caviar reads it (Ray's own names)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED)


class Jobs(Protocol):
    """What the API asks of the cluster. ``status`` is None for a job the cluster does not know
    (a restarted head forgets its jobs)."""

    def submit(self, study_id: str) -> str: ...
    def warm(self) -> None: ...
    def close(self) -> None: ...
    def stop(self, job_id: str) -> bool: ...
    def status(self, job_id: str) -> JobState | None: ...
    def largest_node(self) -> dict[str, float]: ...
    def ping(self) -> bool: ...
    def reset(self) -> None: ...


def driver_env(settings: Settings) -> dict[str, str]:
    """The environment of a study's driver job: where the store and the data directory are, and
    Tune's own knobs (experiment state saved every 2 s, so a resume loses little; no CSV or
    TensorBoard loggers, which cost 0.1-0.3 s a trial)."""
    return {
        "CAVIAR_DATABASE_URL": settings.database_url,
        "CAVIAR_DATA_DIR": str(settings.data_dir),
        "CAVIAR_OPTUNA_STORAGE": settings.optuna_storage,
        "CAVIAR_DRIVER_NICE": str(settings.driver_nice),
        "CAVIAR_REPORT_AHEAD": "true" if settings.report_ahead else "false",
        "CAVIAR_WARM_TRIALS": "true" if settings.warm_trials else "false",
        # where checkpoints go; the object store's credentials are the nodes' own (service.storage)
        **{f"CAVIAR_{k.upper()}": v for k in ("storage", "storage_endpoint_url", "storage_region") if (v := getattr(settings, k))},
        "TUNE_GLOBAL_CHECKPOINT_S": "2",
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    }


def driver_entrypoint(study_id: str, job_id: str) -> str:
    """Ray runs entrypoints with the PATH's python; the service's own has Ray and Caviar installed.
    The driver runs the study only if the store records ``job_id`` as its job (service.runner)."""
    return f"{shlex.quote(sys.executable)} -m service.runner {shlex.quote(study_id)} --job {shlex.quote(job_id)}"


def standby_entrypoint(job_id: str) -> str:
    """A warm driver: ready before its study exists; it runs the study the store hands job ``job_id``."""
    return f"{shlex.quote(sys.executable)} -m service.runner --standby {shlex.quote(job_id)}"


class RayJobs:
    """A study = one Ray job, through the Jobs API at the dashboard address ``settings.ray_address``.
    With token auth (Ray 2.60 turns it on at the head), the cluster's token goes in each request."""

    def __init__(self, settings: Settings) -> None:
        self.address = settings.ray_address
        self.env = driver_env(settings)
        token = settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client_obj: Any = None
        self.warm_driver, self.warm_trials = settings.warm_driver, settings.warm_trials
        self._standby: str | None = None  # the warm driver's job id, not yet handed a study
        self._claimed_at = 0.0

    def _client(self) -> Any:
        if self._client_obj is None:
            with _RAY_IMPORT:
                from ray.job_submission import JobSubmissionClient

            self._client_obj = JobSubmissionClient(self.address, headers=dict(self.headers))
        return self._client_obj

    def submit(self, study_id: str) -> str:
        """The Ray job that runs ``study_id``: the warm driver when it is up or still starting (the
        caller stores the id; the standby finds its study by it), else a new job of its own. A warm
        driver still starting (PENDING: its supervisor starting; or importing) is further along than a
        new job would be, and a new job beside it would import the same modules on the same cores
        while the standby's trial processes import PyTorch for nothing: the first study after an
        API's start took 22 s to its first trial that way on 2 cores, against about 10 handed over."""
        standby, self._standby = self._standby, None
        state = self.status(standby) if standby is not None else None
        if standby is not None and state in (JobState.PENDING, JobState.RUNNING):
            self._claimed_at = time.monotonic()
            log.info("study %s goes to the warm driver %s (%s)", study_id, standby, state.value)
            return standby
        job_id = f"caviar-{study_id}-{os.urandom(3).hex()}"
        return str(self._client().submit_job(
            entrypoint=driver_entrypoint(study_id, job_id),
            submission_id=job_id,
            runtime_env={"env_vars": self.env},
            metadata={"caviar_study_id": study_id},
        ))

    def warm(self) -> None:
        """Keep a warm driver started (the dispatcher calls this every tick): a new one when there is
        none or it ended (unclaimed for 15 minutes it ends), not within STANDBY_AFTER_CLAIM_S of the last claim."""
        if not self.warm_driver or time.monotonic() - self._claimed_at < STANDBY_AFTER_CLAIM_S:
            return
        if self._standby is not None and self.status(self._standby) in (JobState.PENDING, JobState.RUNNING):
            return
        job_id = f"caviar-standby-{os.urandom(4).hex()}"
        runtime_env: dict[str, Any] = {"env_vars": self.env}
        if self.warm_trials:  # each of the job's worker processes imports PyTorch and the trainables as it starts
            runtime_env["worker_process_setup_hook"] = TRIAL_SETUP_HOOK
        self._standby = str(self._client().submit_job(
            entrypoint=standby_entrypoint(job_id), submission_id=job_id, runtime_env=runtime_env,
            metadata={"caviar_standby": "1"},
        ))

    def close(self) -> None:
        """Stop the warm driver not handed a study (the API is shutting down)."""
        standby, self._standby = self._standby, None
        if standby is not None:
            try:
                self.stop(standby)
            except Exception as exc:  # the cluster may be gone already
                log.warning("could not stop the warm driver %s: %s", standby, exc)

    def stop(self, job_id: str) -> bool:
        return bool(self._client().stop_job(job_id))

    def status(self, job_id: str) -> JobState | None:
        try:
            status = self._client().get_job_status(job_id)
        except RuntimeError:  # unknown job (e.g. a new cluster)
            return None
        return JobState(getattr(status, "value", status))

    def largest_node(self) -> dict[str, float]:
        """Total resources of the largest alive node: a trial must fit on one node."""
        with _RAY_IMPORT:
            from ray.util.state import StateApiClient
            from ray.util.state.common import ListApiOptions, StateResource

        nodes: list[Any] = StateApiClient(self.address, headers=dict(self.headers)).list(
            StateResource.NODES, options=ListApiOptions(limit=1000, detail=True), raise_on_missing_output=False)
        best: dict[str, float] = {}
        for found in nodes:
            node: dict[str, Any] = found if isinstance(found, dict) else vars(found)
            if node.get("state") != "ALIVE":
                continue
            for key in ("CPU", "GPU"):
                best[key] = max(best.get(key, 0.0), float((node.get("resources_total") or {}).get(key, 0.0)))
        return best

    def ping(self) -> bool:
        try:
            self._client().get_version()
            return True
        except Exception:
            self._client_obj = None
            return False

    def reset(self) -> None:
        self._client_obj = None
