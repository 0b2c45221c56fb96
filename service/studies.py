"""Study use cases: what the routes call. Routes parse and map errors; this module decides."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from service.ray_adapter import TERMINAL_JOB_STATES, RayJobs
from service.schemas import (
    FINISHED,
    BestEntry,
    BestOut,
    StudyDefinition,
    StudyOut,
    StudyStatus,
    TrialDetail,
    TrialOut,
    check_definition,
)
from service.settings import Settings
from service.store import Store, StudyRow, TrialRow, now

log = logging.getLogger("caviar.studies")
RESTOP_WINDOW = timedelta(hours=1)


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    pass


@dataclass
class Context:
    settings: Settings
    store: Store
    ray: RayJobs


def submit(ctx: Context, definition: StudyDefinition) -> StudyOut:
    """Validate fully, store as queued; the dispatcher hands it to Ray (the API never blocks on Ray)."""
    try:
        cluster = ctx.ray.largest_node()
    except Exception:  # Ray unreachable: resources are checked by Ray when it comes back
        cluster = None
    check_definition(definition, max_grid_points=ctx.settings.max_grid_points, cluster=cluster, data_dir=ctx.settings.data_dir)
    row = ctx.store.create_study(definition.name, definition.model_dump(mode="json"))
    return study_out(ctx, row)


def get(ctx: Context, study_id: str) -> StudyRow:
    row = ctx.store.get_study(study_id)
    if row is None:
        raise NotFound(f"no study '{study_id}'")
    return row


def study_out(ctx: Context, row: StudyRow) -> StudyOut:
    d = row.definition
    best_rows = ctx.store.best_trials(row.id, d["objective"]["mode"], 1)
    best = None
    if best_rows:
        b = best_rows[0]
        best = {"trial_id": b.trial_id, "value": b.best_value, "config": b.config}
    return StudyOut(
        id=row.id, name=row.name, status=StudyStatus(row.status), trainable=d["trainable"], objective=d["objective"],
        trial_counts=ctx.store.trial_counts(row.id), best=best, ray_job_id=row.ray_job_id,
        dashboard_url=f"{ctx.settings.dashboard_url}/#/jobs/{row.ray_job_id}" if row.ray_job_id else None,
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at, error=row.error,
        definition=d,
    )


def list_page(ctx: Context, status: StudyStatus | None, offset: int, limit: int) -> tuple[list[StudyOut], int]:
    rows, total = ctx.store.list_studies(status.value if status else None, offset, limit)
    return [study_out(ctx, r) for r in rows], total


def trial_out(row: TrialRow) -> dict[str, Any]:
    return {
        "trial_id": row.trial_id, "state": row.state, "config": row.config, "epochs": row.epochs,
        "last_metrics": row.last_metrics, "best_value": row.best_value, "error": row.error,
        "started_at": row.started_at, "finished_at": row.finished_at,
    }


def trials(ctx: Context, study_id: str) -> list[TrialOut]:
    get(ctx, study_id)
    return [TrialOut(**trial_out(r)) for r in ctx.store.trials(study_id)]


def trial(ctx: Context, study_id: str, trial_id: str) -> TrialDetail:
    get(ctx, study_id)
    found = ctx.store.trial(study_id, trial_id)
    if found is None:
        raise NotFound(f"no trial '{trial_id}' in study '{study_id}'")
    row, history = found
    return TrialDetail(**trial_out(row), history=history)


def best(ctx: Context, study_id: str, k: int) -> BestOut:
    row = get(ctx, study_id)
    objective = row.definition["objective"]
    items = [
        BestEntry(trial_id=t.trial_id, config=t.config, metrics=t.last_metrics, value=float(t.best_value))  # type: ignore[arg-type]
        for t in ctx.store.best_trials(study_id, objective["mode"], k)
    ]
    return BestOut(study_id=study_id, objective=objective, items=items, test_metrics=row.test_metrics)


def cancel(ctx: Context, study_id: str) -> StudyOut:
    row = get(ctx, study_id)
    if StudyStatus(row.status) in FINISHED:
        raise Conflict(f"study '{study_id}' is already {row.status}; only queued or running studies can be cancelled")
    ctx.store.finish_study(study_id, StudyStatus.CANCELLED, error=None)
    if row.ray_job_id:
        try:
            ctx.ray.stop(row.ray_job_id)  # stops the driver; its trials die with it
        except Exception as exc:  # dispatch_once retries while the job still runs
            log.warning("could not stop job %s yet: %s", row.ray_job_id, exc)
    return study_out(ctx, get(ctx, study_id))


def dispatch_once(ctx: Context) -> None:
    """Hand queued studies to Ray; stop jobs of cancelled studies; fail studies whose job died.

    Runs periodically in the API process (in a worker thread). Idempotent.
    """
    env = {"CAVIAR_DATABASE_URL": ctx.store.url, "CAVIAR_DATA_DIR": str(ctx.settings.data_dir)}
    for row in ctx.store.studies_with_status(StudyStatus.QUEUED.value):
        if row.ray_job_id:
            continue
        job_id = ctx.ray.submit(row.id, env)
        if not ctx.store.update_study(row.id, only_if=(StudyStatus.QUEUED.value,), ray_job_id=job_id):
            ctx.ray.stop(job_id)  # cancelled while we submitted
    # a cancel whose stop request failed (Ray busy or down) is retried until the job has ended
    for row in ctx.store.studies_with_status(StudyStatus.CANCELLED.value, finished_after=now() - RESTOP_WINDOW):
        if row.ray_job_id and ctx.ray.status(row.ray_job_id) not in (*TERMINAL_JOB_STATES, None):
            ctx.ray.stop(row.ray_job_id)
    for row in ctx.store.studies_with_status(StudyStatus.QUEUED.value, StudyStatus.RUNNING.value):
        if not row.ray_job_id:
            continue
        status = ctx.ray.status(row.ray_job_id)
        if status in TERMINAL_JOB_STATES or status is None:
            fresh = ctx.store.get_study(row.id)
            if fresh is not None and StudyStatus(fresh.status) not in FINISHED:
                ctx.store.finish_study(row.id, StudyStatus.FAILED, error=f"the study's Ray job ended as {status or 'unknown'} before the study finished")
