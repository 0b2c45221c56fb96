"""Study use cases: what the routes call. Routes parse and map errors; this module decides."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from fastapi.concurrency import run_in_threadpool
from pydantic import TypeAdapter, ValidationError

import search_spaces
from service.api import plots
from service.api.longpoll import MAX_WAIT_S, FinishWatch
from service.api.readcache import ReadCache
from service.api.schemas import (
    BestEntry,
    BestOut,
    ImportanceOut,
    Intervention,
    ParetoOut,
    ParetoPoint,
    RefineOut,
    RefineRequest,
    StudyOut,
    StudySummary,
    TrialDetail,
    TrialOut,
)
from service.definition import FINISHED, DefinitionError, StudyDefinition, StudyStatus, check_definition, freeze
from service.jobs import Jobs
from service.pareto import front, minimized
from service.settings import Settings
from service.storage import open_storage
from service.store import LOCAL_OWNER, Store, StudyRow, TrialRow, now
from service.store.engine import json_loads
from trainables import get_trainable

log = logging.getLogger("caviar.studies")


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    pass


class InFlight(Conflict):
    """The same Idempotency-Key is being processed by another request."""


class KeyReused(ValueError):
    """An Idempotency-Key was used before with a different body."""


class QuotaExceeded(RuntimeError):
    pass


@dataclass
class Context:
    settings: Settings
    store: Store
    jobs: Jobs
    reads: ReadCache = field(init=False)
    finishes: FinishWatch = field(init=False)  # what long polls wait on
    dispatch_now: asyncio.Event = field(default_factory=asyncio.Event, init=False)  # wakes the dispatcher loop
    dispatch_lock: threading.Lock = field(default_factory=threading.Lock, init=False)  # one tick, or the stop, at a time
    importances: dict[tuple[str, int, int], dict[str, float]] = field(default_factory=dict, init=False)  # computed importances
    lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    clock: Callable[[], datetime] = field(default_factory=lambda: now, init=False)  # what schedules call now (tests inject one)

    def __post_init__(self) -> None:
        self.reads = ReadCache(self.settings.read_cache_s)
        self.finishes = FinishWatch(self.store)


def body_hash(data: Any) -> str:
    """What makes two submissions 'the same body': the parsed definition, not its bytes (JSON or YAML)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def submit(ctx: Context, data: dict[str, Any], owner: str = LOCAL_OWNER, idempotency_key: str | None = None, *,
           fork: bool = False) -> tuple[StudyOut, bool]:
    """Validate fully, store as queued; the dispatcher hands it to Ray (the API never blocks on Ray).

    Returns (the study, whether it was created now). With ``idempotency_key``: the same key and body
    return the study the first request created; another body is KeyReused; a request still in
    flight with the key is InFlight.
    """
    if idempotency_key is not None:
        outcome, study_id = ctx.store.keys.claim(owner, idempotency_key, body_hash(data))
        if outcome == "replay":
            return study_out(ctx, get(ctx, study_id or "", owner)), False
        if outcome == "mismatch":
            raise KeyReused(f"Idempotency-Key '{idempotency_key}' was already used with a different body" + (f" (study {study_id})" if study_id else ""))
        if outcome == "in_flight":
            raise InFlight(f"a request with Idempotency-Key '{idempotency_key}' is still being processed; retry shortly")
    try:
        definition = StudyDefinition.model_validate(data)
        s = ctx.settings
        try:  # the largest node alive, or that the autoscaler can add (settings.node_resources)
            live = ctx.jobs.largest_node()
            cluster = {k: max(live.get(k, 0.0), float(s.node_resources.get(k, 0.0))) for k in ("CPU", "GPU")}
        except Exception:  # Ray unreachable: resources are checked by Ray when it comes back
            cluster = None
        space = check_definition(definition, max_grid_points=s.max_grid_points, cluster=cluster, data_dir=s.data_dir,
                                 max_file_bytes=s.max_dataset_file_bytes)
        if definition.fork is not None and not fork:  # it names a checkpoint the driver loads: the service sets it, nobody else
            raise DefinitionError("fork", "set by POST /v1/studies/{id}/trials/{trial_id}/fork only")
        parent_id = definition.fork.study if definition.fork is not None else _warm_start_parent(ctx, definition, owner)
        check_quota(ctx, owner, definition.budget.max_concurrent_trials)
        row = ctx.store.studies.create(definition.name, freeze(definition, space), owner=owner, idempotency_key=idempotency_key,
                                       parent_id=parent_id)
    except BaseException:
        if idempotency_key is not None:
            ctx.store.keys.release(owner, idempotency_key)
        raise
    return study_out(ctx, row), True


def check_quota(ctx: Context, owner: str, want: int) -> None:
    """One more active study of ``owner`` with ``want`` concurrent trials fits the quotas, or QuotaExceeded."""
    s = ctx.settings
    studies_active, trials_active = ctx.store.studies.owner_usage(owner)
    if studies_active + 1 > s.quota_active_studies:
        raise QuotaExceeded(f"owner '{owner}' has {studies_active} studies queued or running; the quota is {s.quota_active_studies}. "
                            "Wait for one to finish or cancel one")
    if trials_active + want > s.quota_concurrent_trials:
        raise QuotaExceeded(f"owner '{owner}' runs up to {trials_active} concurrent trials; this study adds {want} "
                            f"(budget.max_concurrent_trials) and the quota is {s.quota_concurrent_trials}")


def _warm_start_parent(ctx: Context, d: StudyDefinition, owner: str) -> str | None:
    """The study ``warm_start`` names, checked: this owner's, with a measured trial to start from."""
    if d.warm_start is None:
        return None
    parent = ctx.store.studies.get(d.warm_start.study)
    if parent is None or parent.owner != owner:
        raise DefinitionError("warm_start.study", f"no study '{d.warm_start.study}' (of owner '{owner}')")
    theirs = parent.definition.get("objectives") or [parent.definition["objective"]]
    if not ctx.store.trials.top(parent.id, [(o["metric"], o["mode"]) for o in theirs], 1):
        measured = "completed trial with every objective's value" if len(theirs) > 1 else "completed or stopped-early trial with a value"
        raise DefinitionError("warm_start.study", f"study '{parent.id}' has no {measured} to start from")
    return parent.id


def get(ctx: Context, study_id: str, owner: str | None = None) -> StudyRow:
    """A study by id; with ``owner``, another owner's study is NotFound (as if it did not exist)."""
    row = ctx.store.studies.get(study_id)
    _check_owner(row, study_id, owner)
    return row  # type: ignore[return-value]


def _check_owner(row: StudyRow | None, study_id: str, owner: str | None) -> None:
    if row is None or (owner is not None and row.owner != owner):
        raise NotFound(f"no study '{study_id}'")


def view(ctx: Context, study_id: str, owner: str | None = None) -> StudyOut:
    """GET /v1/studies/{id}: one read of the store."""
    found = ctx.store.studies.view(study_id)
    _check_owner(found[0] if found else None, study_id, owner)
    assert found is not None
    return _out(ctx, *found)


async def view_json(ctx: Context, study_id: str, owner: str, wait_s: float = 0.0) -> bytes:
    """GET /v1/studies/{id} as JSON, through the read cache. With ``wait_s`` a long poll: a study that
    has not finished is waited for up to ``wait_s`` seconds (FinishWatch); when it finishes, the
    cached view is dropped, so this answer and every read after it show it finished at once (a
    cached view can be half a second old)."""
    def fill() -> bytes:
        return view(ctx, study_id, owner).model_dump_json().encode()

    if wait_s > 0:
        row = await run_in_threadpool(get, ctx, study_id, owner)  # 404 at once for a study this owner cannot see
        if StudyStatus(row.status) in FINISHED or await ctx.finishes.wait(study_id, min(wait_s, MAX_WAIT_S)):
            ctx.reads.invalidate(study_id)
    return await ctx.reads.get((study_id, owner, "study"), fill)


def study_out(ctx: Context, row: StudyRow) -> StudyOut:
    found = ctx.store.studies.view(row.id)
    return _out(ctx, *found) if found else _out(ctx, row, {}, None)


def _fields(ctx: Context, row: Any, trainable: str, objective: dict[str, Any], num_trials: int, counts: dict[str, int],
            b: TrialRow | None) -> dict[str, Any]:
    """A study's summary fields (``StudySummary``), from its row (an ORM row or a listing's plain row)."""
    best = {"trial_id": b.trial_id, "value": b.best_value, "config": b.config} if b is not None else None
    return dict(
        id=row.id, name=row.name, status=StudyStatus(row.status), trainable=trainable, objective=objective,
        trial_counts=counts, best=best, ray_job_id=row.ray_job_id,
        dashboard_url=f"{ctx.settings.dashboard_url}/#/jobs/{row.ray_job_id}" if row.ray_job_id else None,
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at, error=row.error,
        owner=row.owner, resumes=row.resumes, parent_id=row.parent_id, extended_at=row.extended_at,
        num_trials=num_trials,
    )


def _out(ctx: Context, row: StudyRow, counts: dict[str, int], b: TrialRow | None) -> StudyOut:
    d = row.definition
    return StudyOut(**_fields(ctx, row, d["trainable"], d["objective"], d["budget"]["num_trials"], counts, b), definition=d)


_SUMMARY = StudySummary.__pydantic_serializer__
_DEFINITION = TypeAdapter(dict[str, Any])  # as StudyOut.definition serializes: NaN and infinities as null


def _definition_json(text: str) -> bytes:
    """A stored definition as a response's JSON: its text as stored, but where it holds NaN or an
    infinity (Python's json writes them; JSON has neither), which become null as ``StudyOut`` writes them."""
    if "NaN" in text or "Infinity" in text:
        return _DEFINITION.dump_json(json_loads(text))
    return text.encode()


def list_page_json(ctx: Context, status: StudyStatus | None, offset: int, limit: int, owner: str | None = None,
                   parent_id: str | None = None, *, summary: bool = False) -> bytes:
    """A page of studies, newest first, as the JSON of ``StudyPage`` (``summary``: ``StudySummaryPage``,
    without their definitions). Each definition goes out as the store holds its JSON, undecoded: the
    page's summaries are the only part built as models (a page of 50 in 0.65x the CPU of building
    it all as ``StudyOut``s: docs/benchmarks.md §4)."""
    views, total = ctx.store.studies.page(status.value if status else None, offset, limit, owner=owner, parent_id=parent_id)
    items = []
    for row, counts, b in views:
        item = _SUMMARY.to_json(StudySummary(**_fields(ctx, row, row.trainable, row.objective, row.num_trials, counts, b)))
        items.append(item if summary else b"".join((item[:-1], b',"definition":', _definition_json(row.definition_json), b"}")))
    return b"".join((b'{"items":[', b",".join(items), b'],"total":%d,"offset":%d,"limit":%d}' % (total, offset, limit)))


def trial_out(row: TrialRow) -> dict[str, Any]:
    return {
        "trial_id": row.trial_id, "state": row.state, "config": row.config, "epochs": row.epochs,
        "last_metrics": row.last_metrics, "best_value": row.best_value, "error": row.error, "retries": row.retries, "node": row.node, "device": row.device,
        "started_at": row.started_at, "finished_at": row.finished_at,
    }


def trials(ctx: Context, study_id: str, owner: str | None = None) -> list[TrialOut]:
    row, rows = ctx.store.studies.with_trials(study_id)
    _check_owner(row, study_id, owner)
    return [TrialOut(**trial_out(r)) for r in rows]


_TRIALS = TypeAdapter(list[TrialOut])


async def trials_json(ctx: Context, study_id: str, owner: str) -> bytes:
    """GET /v1/studies/{id}/trials as JSON, through the read cache."""
    return await ctx.reads.get((study_id, owner, "trials"), lambda: _TRIALS.dump_json(trials(ctx, study_id, owner)))


def trials_page(ctx: Context, study_id: str, owner: str | None, *, state: str | None, sort: str, descending: bool,
                offset: int, limit: int) -> tuple[bytes, int]:
    """One page of the study's trials, sorted by the store, as JSON, and the total that matches."""
    get(ctx, study_id, owner)
    rows, total = ctx.store.trials.page(study_id, state=state, sort=sort, descending=descending, offset=offset, limit=limit)
    return _TRIALS.dump_json([TrialOut(**trial_out(r)) for r in rows]), total


async def plots_json(ctx: Context, study_id: str, owner: str) -> bytes:
    """GET /v1/studies/{id}/plots as JSON (service.api.plots), through the read cache."""
    def fill() -> bytes:
        return plots.plots(ctx.store, get(ctx, study_id, owner)).model_dump_json().encode()
    return await ctx.reads.get((study_id, owner, "plots"), fill)


def trial(ctx: Context, study_id: str, trial_id: str, owner: str | None = None) -> TrialDetail:
    get(ctx, study_id, owner)
    found = ctx.store.trials.get(study_id, trial_id)
    if found is None:
        raise NotFound(f"no trial '{trial_id}' in study '{study_id}'")
    row, history = found
    interventions = [Intervention(id=a.pk, changes=a.changes, by=a.by, requested_at=a.requested_at, after_epoch=a.after_epoch)
                     for a in ctx.store.adjustments.for_trial(study_id, trial_id)]
    return TrialDetail(**trial_out(row), history=history, interventions=interventions)


def _adjustable(d: StudyDefinition, changes: dict[str, Any], config: dict[str, Any]) -> None:
    """``changes`` name knobs the trainable declares adjustable, with values its config model accepts."""
    spec = get_trainable(d.trainable)
    if not spec.adjustable:
        raise DefinitionError("trainable", f"'{d.trainable}' declares no adjustable knobs (TrainableSpec.adjustable)")
    for knob in changes:
        if knob not in spec.adjustable:
            raise DefinitionError(knob, f"'{knob}' is not adjustable in '{d.trainable}' (adjustable: {', '.join(spec.adjustable)})")
    try:  # the values as the trainable's config model checks them
        spec.config({**d.constants(), **config, **changes})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise DefinitionError(str(err["loc"][0]) if err["loc"] else "body", err["msg"]) from None


def fork(ctx: Context, study_id: str, trial_id: str, from_epoch: int, changes: dict[str, Any], owner: str) -> StudyOut:
    """The seed's "try something else from here": a new panda study whose one trial starts from
    ``trial_id``'s checkpoint at ``from_epoch`` with ``changes`` (adjustable knobs) from then on."""
    row = get(ctx, study_id, owner)
    d = StudyDefinition.model_validate(row.definition)
    found = ctx.store.trials.get(study_id, trial_id)
    if found is None:
        raise NotFound(f"no trial '{trial_id}' in study '{study_id}'")
    trial_row, history = found
    _adjustable(d, changes, trial_row.config)
    kept = {int(h["epoch"]): h["checkpoint"] for h in history if h.get("checkpoint")}
    if from_epoch not in kept or not trial_row.trial_dir:
        at = ", ".join(map(str, sorted(kept))) or "none"
        raise Conflict(f"trial '{trial_id}' has no checkpoint at epoch {from_epoch} (at epochs: {at}); panda studies checkpoint every epoch")
    if from_epoch >= d.epochs():
        raise DefinitionError("from_epoch", f"must be below the {d.epochs()} epochs the trial runs")
    config = {**trial_row.config, **changes}
    space = d.space().to_dict()
    data = {**row.definition, "name": f"{row.name}-fork"[:128], "mode": "panda", "warm_start": None,
            "scheduler": {"type": "none"}, "budget": {**row.definition["budget"], "num_trials": 1, "max_concurrent_trials": 1},
            "search_space": {k: {"type": "categorical", "choices": [v]} for k, v in config.items() if k in space},
            "fixed": {**row.definition.get("fixed", {}), **{k: v for k, v in changes.items() if k not in space}},
            "fork": {"study": study_id, "trial": trial_id, "epoch": from_epoch, "checkpoint": f"{trial_row.trial_dir}/{kept[from_epoch]}",
                     "changes": changes}}
    study, _ = submit(ctx, data, owner, fork=True)
    return study


def adjust(ctx: Context, study_id: str, trial_id: str, changes: dict[str, Any], owner: str) -> Intervention:
    """Panda mode: change knobs of a running trial from its next epoch on (what its trainable declares adjustable)."""
    row = get(ctx, study_id, owner)
    d = StudyDefinition.model_validate(row.definition)
    if d.mode != "panda":
        raise DefinitionError("mode", f"study '{study_id}' is in {d.mode} mode; trials are adjusted in panda mode (mode: panda)")
    if not changes:
        raise DefinitionError("body", "name at least one knob to change")
    found = ctx.store.trials.get(study_id, trial_id)
    if found is None:
        raise NotFound(f"no trial '{trial_id}' in study '{study_id}'")
    trial_row = found[0]
    _adjustable(d, changes, trial_row.config)
    if row.status != StudyStatus.RUNNING.value or trial_row.state != "running":
        raise Conflict(f"trial '{trial_id}' is {trial_row.state} in a {row.status} study; only a running trial can be adjusted")
    a = ctx.store.adjustments.add(study_id, trial_id, changes, owner)
    return Intervention(id=a.pk, changes=a.changes, by=a.by, requested_at=a.requested_at, after_epoch=None)


def checkpoint(ctx: Context, study_id: str, trial_id: str, owner: str | None = None) -> tuple[IO[bytes], str]:
    """The trial's newest checkpoint as a .tar.gz (a file to stream) and its file name. The archive
    holds Tune's checkpoint files and ``caviar.json``: the trainable, the trial's whole config
    (sampled values and the study's constants) and its last metrics, all a loader needs
    (``trainables.load_model``)."""
    row = get(ctx, study_id, owner)
    found = ctx.store.trials.get(study_id, trial_id)
    if found is None:
        raise NotFound(f"no trial '{trial_id}' in study '{study_id}'")
    trial_row, _ = found
    storage = open_storage(ctx.settings)
    path = storage.latest_checkpoint(study_id, trial_row.trial_dir) if trial_row.trial_dir else None
    if path is None:
        raise NotFound(f"trial '{trial_id}' of study '{study_id}' has no checkpoint (yet) in {storage.uri}")
    d = StudyDefinition.model_validate(row.definition)
    manifest = {
        "study_id": study_id, "trial_id": trial_id, "trainable": d.trainable, "objective": d.objective.model_dump(),
        "config": {**d.constants(), **trial_row.config}, "metrics": trial_row.last_metrics,
        "checkpoint": path.rsplit("/", 1)[-1], "storage": storage.uri,
    }
    return storage.checkpoint_archive(path, manifest), f"{study_id}-{trial_id}-{manifest['checkpoint']}.tar.gz"


IMPORTANCE_STATES = ("completed", "stopped_early")
MAX_IMPORTANCE_TRIALS = 1000  # fANOVA's forest over more takes minutes; an even sample over the study's order


def importance(ctx: Context, study_id: str, owner: str | None = None) -> ImportanceOut:
    """Which hyperparameters matter, from the completed and stopped-early trials' best values."""
    row = get(ctx, study_id, owner)
    d = StudyDefinition.model_validate(row.definition)
    measured = [(t.config, float(t.best_value)) for t in ctx.store.trials.for_study(study_id)
                if t.state in IMPORTANCE_STATES and t.best_value is not None]
    if len(measured) < 2:
        raise Conflict(f"study '{study_id}' has {len(measured)} completed or stopped-early trials with a value; importance needs at least 2")
    used = plots.even(measured, MAX_IMPORTANCE_TRIALS)
    key = (study_id, len(measured), hash(tuple(v for _, v in used)))
    scores = ctx.importances.get(key)
    if scores is None:  # the forest is the slow part: computed once per set of measured trials
        scores = search_spaces.importance(d.space(), used, d.objective.mode)
        with ctx.lock:
            ctx.importances[key] = scores
            while len(ctx.importances) > 256:
                ctx.importances.pop(next(iter(ctx.importances)))
    return ImportanceOut(study_id=study_id, evaluator=search_spaces.IMPORTANCE_EVALUATOR, states=list(IMPORTANCE_STATES),
                         trials_used=len(used), trials_measured=len(measured), importances=scores)


PARETO_STATES = ("completed",)
MAX_PARETO_POINTS = 2000


def pareto(ctx: Context, study_id: str, owner: str | None = None) -> ParetoOut:
    """The non-dominated completed trials by the study's objectives (one objective: its best trials),
    with the considered trials' points for a scatter."""
    row = get(ctx, study_id, owner)
    d = StudyDefinition.model_validate(row.definition)
    objectives = [(o.metric, o.mode) for o in d.objective_list()]
    done = [t for t in ctx.store.trials.for_study(study_id) if t.state in PARETO_STATES]
    pts = [minimized(t.last_metrics or {}, objectives) for t in done]
    on = [i for i in front(pts) if all(math.isfinite(v) for v in pts[i])]
    on.sort(key=lambda i: (pts[i], i))

    def point(i: int, config: bool) -> ParetoPoint:
        m = done[i].last_metrics or {}
        values = {k: (float(m[k]) if isinstance(m.get(k), (int, float)) and math.isfinite(m[k]) else None) for k, _ in objectives}
        return ParetoPoint(trial_id=done[i].trial_id, values=values, config=done[i].config if config else None)

    chosen = set(on)
    rest = plots.even([i for i in range(len(done)) if i not in chosen], max(0, MAX_PARETO_POINTS - len(on)))
    return ParetoOut(study_id=study_id, objectives=d.objective_list(), states=list(PARETO_STATES), trials_considered=len(done),
                     front=[point(i, True) for i in on], points=[point(i, False) for i in sorted([*on, *rest])])


def best(ctx: Context, study_id: str, k: int, owner: str | None = None) -> BestOut:
    row = get(ctx, study_id, owner)
    objective = row.definition["objective"]
    items = [
        BestEntry(trial_id=t.trial_id, config=t.config, metrics=t.last_metrics, value=float(t.best_value))  # type: ignore[arg-type]
        for t in ctx.store.trials.best(study_id, objective["mode"], k)
    ]
    return BestOut(study_id=study_id, objective=objective, items=items, test_metrics=row.test_metrics)


def refine_definition(ctx: Context, study_id: str, req: RefineRequest, owner: str | None = None) -> RefineOut:
    """The definition of a study that searches ``study_id``'s space narrowed around its top-k
    (with several objectives: the Pareto front first, ``TrialRepo.top``)
    (search_spaces.narrow: log-aware, within the old bounds, categoricals kept to those used),
    warm-started with those configurations; the request's other keys override the parent's."""
    row = get(ctx, study_id, owner)
    d = StudyDefinition.model_validate(row.definition)
    top = ctx.store.trials.top(study_id, [(o.metric, o.mode) for o in d.objective_list()], req.top_k)
    if not top:
        raise Conflict(f"study '{study_id}' has no {'completed' if d.objectives else 'completed or stopped-early'} trial with a value: "
                       "nothing to refine around")
    before = d.space()
    after = search_spaces.narrow(before, [t.config for t in top], margin=req.margin)
    new = {**row.definition, "name": f"{row.name}-refine"[:128], "search_space": after.to_dict(),
           "warm_start": {"study": study_id, "top_k": req.top_k},
           "budget": {**row.definition["budget"], "num_trials": req.num_trials}}
    extra = req.model_extra or {}
    for a, b in (("objectives", "objective"), ("objective", "objectives")):  # one of them overridden: the other goes
        if a in extra:
            new.pop(b, None)
    for key, value in extra.items():  # overrides, merged one level deep; a new sampler or scheduler type replaces
        merge = isinstance(value, dict) and isinstance(new.get(key), dict) and value.get("type", new[key].get("type")) == new[key].get("type")
        new[key] = {**new[key], **value} if merge else value  # its options (they belong to the type: group, window)
    old_params, new_params = before.to_dict(), after.to_dict()
    narrowed = {k: {"before": old_params[k], "after": new_params.get(k)} for k in old_params if old_params[k] != new_params.get(k)}
    return RefineOut(parent_id=study_id, definition=new, narrowed=narrowed)


def extend(ctx: Context, study_id: str, more: int, owner: str | None = None) -> StudyOut:
    """``more`` trials for a finished study: same id, same Optuna study (the sampler keeps its
    history), its trial list grows; it is queued and handed to Ray as a new job."""
    row = get(ctx, study_id, owner)
    if StudyStatus(row.status) not in FINISHED:
        raise Conflict(f"study '{study_id}' is {row.status}; only a finished (completed, failed or cancelled) study can be extended")
    check_quota(ctx, row.owner, int(row.definition["budget"]["max_concurrent_trials"]))
    if not ctx.store.studies.extend(study_id, more):
        raise Conflict(f"study '{study_id}' changed meanwhile; only a finished study can be extended")
    return study_out(ctx, get(ctx, study_id))


def cancel(ctx: Context, study_id: str, owner: str | None = None) -> StudyOut:
    row = get(ctx, study_id, owner)
    if StudyStatus(row.status) in FINISHED:
        raise Conflict(f"study '{study_id}' is already {row.status}; only queued or running studies can be cancelled")
    ctx.store.studies.finish(study_id, StudyStatus.CANCELLED, error=None)
    if row.ray_job_id:
        try:
            ctx.jobs.stop(row.ray_job_id)  # stops the driver; its trials die with it
        except Exception as exc:  # the dispatcher retries while the job still runs
            log.warning("could not stop job %s yet: %s", row.ray_job_id, exc)
    return study_out(ctx, get(ctx, study_id))
