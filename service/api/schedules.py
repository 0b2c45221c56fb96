"""Scheduled re-tuning: the use cases of /v1/schedules, and the dispatcher's step that starts due runs.

A schedule keeps a validated study definition and a period. When a run is due, the dispatcher
submits the definition as a study, warm-started from the previous run's top-k (``warm_start``):
the previous best configurations run first, so each run re-evaluates them on today's data, which
is the drift a run reports (old best then vs the same configuration now), beside the new best.
A run is not started while the previous one is still queued or running; runs missed while the
service was down are not made up in a burst (one run, then the period again). The clock is
``Context.clock`` (tests inject one).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from service.api import studies
from service.api.schemas import ScheduleIn, ScheduleOut, ScheduleRunOut
from service.api.studies import Conflict, Context, NotFound
from service.definition import ACTIVE, DefinitionError, StudyDefinition, StudyStatus, check_definition, freeze
from service.store import ScheduleRow, StudyOutcome

log = logging.getLogger("caviar.schedules")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MIN_EVERY_S, MAX_EVERY_S = 60, 366 * 86400


def parse_every(text: str) -> int:
    found = re.fullmatch(r"\s*(\d{1,9})\s*([smhdw])\s*", text)
    if not found:
        raise DefinitionError("every", f"'{text}' is not a period: a number and a unit, s m h d or w (e.g. 30d, 12h)")
    seconds = int(found.group(1)) * UNITS[found.group(2)]
    if not MIN_EVERY_S <= seconds <= MAX_EVERY_S:
        raise DefinitionError("every", f"'{text}' is {seconds} s; a schedule runs at most every 60 s and at least every 366 d")
    return seconds


def _every_text(seconds: int) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds % UNITS[unit] == 0:
            return f"{seconds // UNITS[unit]}{unit}"
    return f"{seconds}s"


def create(ctx: Context, body: ScheduleIn, owner: str) -> ScheduleOut:
    every_s = parse_every(body.every)
    if "warm_start" in body.definition:
        raise DefinitionError("definition.warm_start", "a schedule sets it: each run starts from the previous run's best")
    try:
        d = StudyDefinition.model_validate(body.definition)
        space = check_definition(d, max_grid_points=ctx.settings.max_grid_points, cluster=None, data_dir=ctx.settings.data_dir,
                                 max_file_bytes=ctx.settings.max_dataset_file_bytes)
    except DefinitionError as exc:
        raise DefinitionError(f"definition.{exc.field}", exc.rule) from None
    now = ctx.clock()
    row = ctx.store.schedules.create(owner, d.name, freeze(d, space), every_s, body.top_k, body.start_at or now, now)
    return out(ctx, row)


def get(ctx: Context, schedule_id: str, owner: str | None) -> ScheduleRow:
    row = ctx.store.schedules.get(schedule_id)
    if row is None or (owner is not None and row.owner != owner):
        raise NotFound(f"no schedule '{schedule_id}'")
    return row


def out(ctx: Context, row: ScheduleRow) -> ScheduleOut:
    return out_many(ctx, [row])[0]


def out_many(ctx: Context, rows: list[ScheduleRow]) -> list[ScheduleOut]:
    """Schedules with their runs, each run with its study's outcome and drift, in the same queries
    whatever the number of schedules and runs (their runs, then the store's ``outcomes``)."""
    runs = ctx.store.schedules.runs([row.id for row in rows])
    ids = {i for rs in runs.values() for r in rs for i in (r.study_id, r.previous_study_id) if i}
    outcomes = ctx.store.studies.outcomes(sorted(ids), after={r.study_id: r.previous_study_id for rs in runs.values() for r in rs if r.previous_study_id})
    return [ScheduleOut(id=row.id, name=row.name, owner=row.owner, every=_every_text(row.every_s), every_s=row.every_s, top_k=row.top_k,
                        paused=row.paused, next_run_at=row.next_run_at, last_study_id=row.last_study_id, last_error=row.last_error,
                        created_at=row.created_at, definition=row.definition, runs=[_run(r, outcomes) for r in runs[row.id]])
            for row in rows]


def _run(r: Any, outcomes: dict[str, StudyOutcome]) -> ScheduleRunOut:
    study = outcomes.get(r.study_id)
    earlier = outcomes.get(r.previous_study_id) if r.previous_study_id else None
    best = study.best if study else None
    previous = earlier.best if earlier else None
    reevaluated = None
    if previous is not None and study is not None:  # the previous best's configuration, trained again in this run
        same = [value for config, value in study.measured
                if all(config.get(k) == v for k, v in previous.config.items() if k in config) and any(k in config for k in previous.config)]
        reevaluated = same[0] if same else None
    prev_value = previous.best_value if previous else None
    return ScheduleRunOut(
        study_id=r.study_id, status=StudyStatus(study.status) if study else None, started_at=r.started_at, previous_study_id=r.previous_study_id,
        best_value=best.best_value if best else None, best_config=best.config if best else None,
        previous_best_value=prev_value, reevaluated_value=reevaluated,
        drift=reevaluated - prev_value if reevaluated is not None and prev_value is not None else None,
        gain=best.best_value - reevaluated if best is not None and best.best_value is not None and reevaluated is not None else None)


def set_paused(ctx: Context, schedule_id: str, owner: str | None, paused: bool) -> ScheduleOut:
    row = get(ctx, schedule_id, owner)
    values: dict[str, Any] = {"paused": paused}
    if not paused and row.next_run_at < ctx.clock():  # resumed after its time: run now, then every period
        values["next_run_at"] = ctx.clock()
    ctx.store.schedules.update(schedule_id, **values)
    return out(ctx, get(ctx, schedule_id, owner))


def delete(ctx: Context, schedule_id: str, owner: str | None) -> None:
    get(ctx, schedule_id, owner)
    if not ctx.store.schedules.delete(schedule_id):
        raise Conflict(f"schedule '{schedule_id}' was deleted meanwhile")


def fire_due(ctx: Context) -> list[str]:
    """Start the runs that are due (a step of the dispatcher); the new studies' ids."""
    started = []
    at = ctx.clock()
    for row in ctx.store.schedules.due(at):
        last = ctx.store.studies.get(row.last_study_id) if row.last_study_id else None
        if last is not None and last.status in ACTIVE:
            continue  # the previous run goes on: this one starts when it ends
        if ctx.store.schedules.claim(row, at) is None:
            continue  # another API process started it
        data = {**row.definition, "name": f"{row.name}-{at:%Y%m%d-%H%M}"[:128]}
        previous = last.id if last is not None and ctx.store.trials.best(last.id, last.definition["objective"]["mode"], 1) else None
        if previous is not None:
            data["warm_start"] = {"study": previous, "top_k": row.top_k}
        try:
            study, _ = studies.submit(ctx, data, row.owner)
        except Exception as exc:  # quota, a definition no longer valid (a preset or dataset gone): say so, try next period
            log.warning("schedule %s: could not start a run: %s", row.id, exc)
            ctx.store.schedules.update(row.id, last_error=f"{at.isoformat()}: {type(exc).__name__}: {exc}"[:2000])
            continue
        ctx.store.schedules.record_run(row.id, study.id, previous, at)
        started.append(study.id)
        log.info("schedule %s: started study %s%s", row.id, study.id, f" (warm start from {previous})" if previous else "")
    return started
