"""The dispatcher: reconciles the store with Ray, in the API process (a loop in ``app.lifespan``)."""

from __future__ import annotations

import logging
from datetime import timedelta

from service.api import schedules
from service.api.studies import Context
from service.definition import ACTIVE, FINISHED, StudyStatus
from service.jobs import JobState
from service.store import now

log = logging.getLogger("caviar.dispatch")
RESTOP_WINDOW = timedelta(hours=1)


def dispatch_once(ctx: Context) -> None:
    """Reconcile the store with Ray. Runs at start-up and every ``settings.dispatch_interval_s`` in the API process (in a
    worker thread); idempotent, so a killed and restarted API picks up where it was:

    - hand studies without a job (queued, or running whose job died) to Ray: a study's driver
      resumes from Tune's saved experiment state when there is one;
    - stop jobs of cancelled studies (again, if a stop failed);
    - a study whose job died (driver killed, Ray head restarted) is resumed, up to ``max_resumes``
      times, then failed; a job stopped outside Caviar fails its study;
    - trials still pending/running in a finished study (zombies: no process behind them) are failed.
    """
    schedules.fire_due(ctx)  # scheduled re-tuning: due runs become queued studies, handed to Ray below
    for row in ctx.store.studies.with_zombies():
        n = ctx.store.trials.mark_zombies(row.id, f"no process behind this trial: its study is {row.status}")
        if n:
            log.warning("study %s (%s): %d zombie trials marked failed", row.id, row.status, n)
    for row in ctx.store.studies.with_status(*ACTIVE):
        if row.ray_job_id:
            continue
        job_id = ctx.jobs.submit(row.id)
        if not ctx.store.studies.update(row.id, only_if=ACTIVE, ray_job_id=job_id):
            ctx.jobs.stop(job_id)  # cancelled while we submitted
    # a warm driver ready for the next study (settings.warm_driver), started while no study runs:
    # its start-up (imports, a second of CPU or more) does not slow a running study's trials
    if not ctx.store.studies.with_status(StudyStatus.RUNNING.value):
        ctx.jobs.warm()
    # a cancel whose stop request failed (Ray busy or down) is retried until the job has ended
    for row in ctx.store.studies.with_status(StudyStatus.CANCELLED.value, finished_after=now() - RESTOP_WINDOW):
        if row.ray_job_id:
            state = ctx.jobs.status(row.ray_job_id)
            if state is not None and not state.terminal:
                ctx.jobs.stop(row.ray_job_id)
    for row in ctx.store.studies.with_status(*ACTIVE):
        if not row.ray_job_id:
            continue
        state = ctx.jobs.status(row.ray_job_id)
        if state is not None and not state.terminal:
            continue
        fresh = ctx.store.studies.get(row.id)
        if fresh is None or StudyStatus(fresh.status) in FINISHED or fresh.ray_job_id != row.ray_job_id:
            continue  # the driver finished it (or it was cancelled) before its job ended
        # FAILED without the driver marking the study: the driver died (kill -9, OOM, node lost);
        # unknown (None): the Ray cluster was restarted and forgot the job
        if state in (JobState.FAILED, None) and fresh.resumes < ctx.settings.max_resumes:
            if ctx.store.studies.update(row.id, only_if=(fresh.status,), ray_job_id=None, resumes=fresh.resumes + 1):
                log.warning("study %s: its Ray job %s ended as %s; resuming (resume %d)", row.id, row.ray_job_id, state or "unknown", fresh.resumes + 1)
            continue
        why = "was stopped outside Caviar" if state == JobState.STOPPED else f"ended as {state or 'unknown'}"
        extra = f" after {fresh.resumes} resumes" if fresh.resumes else ""
        ctx.store.studies.finish(row.id, StudyStatus.FAILED, error=f"the study's Ray job {why} before the study finished{extra}")
