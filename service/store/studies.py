"""Studies: create, read, page, update with conditions, finish; a study's view with its trial counts."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Literal

from sqlalchemy import Text, bindparam, case, cast, func, select, update

from service.store.engine import Database, json_loads, retry_transient
from service.store.models import (
    ACTIVE,
    FINISHED,
    LOCAL_OWNER,
    IdempotencyRow,
    StudyRow,
    StudyStatus,
    TrialRow,
    TrialState,
    now,
)
from service.store.trials import best_many, best_query, counts_many, counts_query

# what a listing shows of each study (service.api.studies reads these), read as plain rows rather than
# ORM objects: no identity map or instance state, test_metrics not decoded. The definition comes back
# as its stored JSON text (``definition_json``), which the listing passes through undecoded, with the
# three of its fields a summary shows extracted by the database (docs/benchmarks.md §4)
_DEFINITION = StudyRow.definition
_SUMMARIZED = {"trainable": _DEFINITION["trainable"].as_string(), "objective": _DEFINITION["objective"],
               "num_trials": _DEFINITION[("budget", "num_trials")].as_integer()}
LISTED = (StudyRow.id, StudyRow.name, StudyRow.status, StudyRow.owner, StudyRow.resumes, StudyRow.ray_job_id,
          StudyRow.error, StudyRow.created_at, StudyRow.started_at, StudyRow.finished_at, StudyRow.parent_id, StudyRow.extended_at,
          cast(_DEFINITION, Text).label("definition_json"))


@functools.cache
def _page_statements(sqlite: bool, status: bool, owner: bool, parent_id: bool) -> tuple[Any, Any]:
    """A page's rows and its total, for the filters given, with bound parameters: built and compiled
    once per combination of filters rather than once per request. A definition that holds NaN or an
    infinity (Python's json writes them; PostgreSQL never stores them) is not JSON to SQLite's
    ``json_valid``, and SQLite before 3.42 fails on it in every JSON function: there the fields are
    extracted only from valid JSON, and ``_summarized`` decodes the rest."""
    fields = [(case((func.json_valid(_DEFINITION) == 1, e)) if sqlite else e).label(name) for name, e in _SUMMARIZED.items()]
    q, count = select(*LISTED, *fields), select(func.count()).select_from(StudyRow)
    for on, column in ((status, StudyRow.status), (owner, StudyRow.owner), (parent_id, StudyRow.parent_id)):
        if on:
            q, count = q.where(column == bindparam(column.key)), count.where(column == bindparam(column.key))
    q = q.order_by(StudyRow.created_at.desc(), StudyRow.id.desc()).offset(bindparam("offset")).limit(bindparam("limit"))
    return q, count


def _summarized(row: Any) -> Any:
    """A listed row whose summarized fields the database did not extract (see ``_page_statements``),
    with them read from its decoded definition."""
    if row.trainable is not None:
        return row
    d = json_loads(row.definition_json)
    return SimpleNamespace(**{**row._asdict(), "trainable": d.get("trainable"), "objective": d.get("objective"),
                              "num_trials": (d.get("budget") or {}).get("num_trials")})


@dataclass
class StudyOutcome:
    """A study as a schedule's run shows it (``StudyRepo.outcomes``)."""

    status: str
    mode: str
    best: Any = None  # a plain row: study_id, trial_id, best_value, config (trials.best_many)
    measured: list[tuple[dict[str, Any], float]] = field(default_factory=list)


class StudyRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @retry_transient
    def create(self, name: str, definition: dict[str, Any], owner: str = LOCAL_OWNER, idempotency_key: str | None = None,
               parent_id: str | None = None) -> StudyRow:
        """Insert a queued study; with ``idempotency_key`` (claimed before) bind the key to it in the same transaction."""
        row = StudyRow(id=uuid.uuid4().hex[:16], name=name, status=StudyStatus.QUEUED.value, owner=owner, resumes=0,
                       definition=definition, created_at=now(), parent_id=parent_id)
        with self.db.session(write=True) as s:
            s.add(row)
            if idempotency_key is not None:
                s.flush()
                s.execute(update(IdempotencyRow).where(IdempotencyRow.owner == owner, IdempotencyRow.key == idempotency_key).values(study_id=row.id))
        return row

    @retry_transient
    def get(self, study_id: str) -> StudyRow | None:
        with self.db.session() as s:
            return s.get(StudyRow, study_id)

    @retry_transient
    def page(self, status: str | None, offset: int, limit: int, owner: str | None = None, parent_id: str | None = None,
             ) -> tuple[list[tuple[Any, dict[str, int], Any]], int]:
        """Newest first, each study (the LISTED columns, as a row: its definition as the stored JSON text)
        with its trial counts and best trial (as ``view``), and the total that matches: five queries in
        one read transaction, whatever ``limit`` is. An empty status filter is no filter."""
        q, count = _page_statements(self.db.engine.dialect.name == "sqlite", bool(status), owner is not None, parent_id is not None)
        params: dict[str, Any] = {"status": status, "owner": owner, "parent_id": parent_id}
        with self.db.session() as s:
            rows = [_summarized(r) for r in s.execute(q, {**params, "offset": offset, "limit": limit})]
            total = int(s.scalar(count, params) or 0)
            counts = counts_many(s, [r.id for r in rows])
            best: dict[str, Any] = {}
            for mode in ("max", "min"):  # one query per direction (trials.best_many)
                ids = [r.id for r in rows if (r.objective or {}).get("mode", "max") == mode]
                best.update(best_many(s, ids, mode))
            return [(r, counts[r.id], best.get(r.id)) for r in rows], total

    @retry_transient
    def outcomes(self, study_ids: list[str], after: dict[str, str]) -> dict[str, StudyOutcome]:
        """What a schedule's runs show of their studies, in four queries whatever their number: each
        study's status, objective direction and best trial (as ``view``). ``after`` maps a study to
        the one it followed (a schedule's previous run): where that one has a best trial, the study
        also gets the configuration and best value of each of its trials that has one, in the order
        they started (where the earlier best was trained again). A study no longer stored is missing."""
        out: dict[str, StudyOutcome] = {}
        if not study_ids:
            return out
        with self.db.session() as s:
            for sid, status, definition in s.execute(select(StudyRow.id, StudyRow.status, StudyRow.definition).where(StudyRow.id.in_(study_ids))):
                out[sid] = StudyOutcome(status, (definition.get("objective") or {}).get("mode", "max"))
            for mode in ("max", "min"):
                for sid, best in best_many(s, [i for i, o in out.items() if o.mode == mode], mode).items():
                    out[sid].best = best
            wanted = [i for i, earlier in after.items() if i in out and earlier in out and out[earlier].best is not None]
            if wanted:
                q = (select(TrialRow.study_id, TrialRow.config, TrialRow.best_value)
                     .where(TrialRow.study_id.in_(wanted), TrialRow.best_value.is_not(None)).order_by(TrialRow.pk))
                for sid, config, value in s.execute(q):
                    out[sid].measured.append((config, value))
        return out

    @retry_transient
    def finished_among(self, study_ids: list[str]) -> set[str]:
        """Which of these studies have finished (completed, failed or cancelled): one short query,
        what the API's long polls are woken by."""
        with self.db.session() as s:
            q = select(StudyRow.id).where(StudyRow.id.in_(study_ids), StudyRow.status.in_([st.value for st in FINISHED]))
            return set(s.scalars(q))

    @retry_transient
    def with_status(self, *statuses: str, finished_after: datetime | None = None) -> list[StudyRow]:
        q = select(StudyRow).where(StudyRow.status.in_(statuses))
        if finished_after is not None:
            q = q.where(StudyRow.finished_at >= finished_after)
        with self.db.session() as s:
            return list(s.scalars(q))

    @retry_transient
    def awaiting_job(self) -> bool:
        """Whether a queued or running study has no Ray job: what the dispatcher is woken by when the
        study was stored by another API process (one short query, no definitions read)."""
        with self.db.session() as s:
            return s.scalar(select(StudyRow.id).where(StudyRow.status.in_(ACTIVE), StudyRow.ray_job_id.is_(None)).limit(1)) is not None

    @retry_transient
    def for_job(self, job_id: str) -> str | None:
        """The queued or running study handed to Ray job ``job_id`` (a warm driver waits for one)."""
        with self.db.session() as s:
            return s.scalar(select(StudyRow.id).where(StudyRow.ray_job_id == job_id, StudyRow.status.in_(("queued", "running"))))

    @retry_transient
    def update(self, study_id: str, *, only_if: tuple[str, ...] | None = None, only_job: str | Literal[False] | None = False,
               **values: Any) -> bool:
        """Update a study; with ``only_if`` the update happens only from those statuses, with
        ``only_job`` only while that Ray job (None: no job) is the one recorded for it (returns
        whether it did). The dispatcher's compare-and-set: two of them never both act on one job."""
        stmt = update(StudyRow).where(StudyRow.id == study_id)
        if only_if:
            stmt = stmt.where(StudyRow.status.in_(only_if))
        if only_job is not False:
            stmt = stmt.where(StudyRow.ray_job_id.is_(None) if only_job is None else StudyRow.ray_job_id == only_job)
        with self.db.session(write=True) as s:
            return bool(s.execute(stmt.values(**values)).rowcount)  # type: ignore[attr-defined]

    @retry_transient
    def extend(self, study_id: str, more: int) -> bool:
        """A finished study runs ``more`` trials: back to queued, without a job, its budget grown.
        Only from a finished status (returns whether it happened)."""
        with self.db.session(write=True) as s:
            row = s.get(StudyRow, study_id, with_for_update=True)
            if row is None or StudyStatus(row.status) not in FINISHED:
                return False
            budget = dict(row.definition.get("budget") or {})
            budget["num_trials"] = int(budget.get("num_trials") or 0) + more
            row.definition = {**row.definition, "budget": budget}
            row.status, row.ray_job_id, row.error, row.finished_at = StudyStatus.QUEUED.value, None, None, None
            row.resumes, row.extended_at = 0, now()
            return True

    def finish(self, study_id: str, status: StudyStatus, error: str | None = None) -> bool:
        """Mark a running/queued study finished; a study already finished (e.g. cancelled) keeps its status."""
        return self.update(study_id, only_if=ACTIVE, status=status.value, error=error, finished_at=now())

    @retry_transient
    def owner_usage(self, owner: str) -> tuple[int, int]:
        """(studies queued or running, their summed max_concurrent_trials) of one owner: what quotas count."""
        with self.db.session() as s:
            rows = list(s.scalars(select(StudyRow.definition).where(StudyRow.owner == owner, StudyRow.status.in_(ACTIVE))))
        return len(rows), sum(int((d.get("budget") or {}).get("max_concurrent_trials") or 1) for d in rows)

    @retry_transient
    def view(self, study_id: str) -> tuple[StudyRow, dict[str, int], TrialRow | None] | None:
        """A study with its trial counts and best trial so far, in one read transaction."""
        with self.db.session() as s:
            row = s.get(StudyRow, study_id)
            if row is None:
                return None
            best = list(s.scalars(best_query(study_id, row.definition.get("objective", {}).get("mode", "max"), 1)))
            return row, counts_query(s, study_id), best[0] if best else None

    @retry_transient
    def with_trials(self, study_id: str) -> tuple[StudyRow | None, list[TrialRow]]:
        """A study and its trials in one read transaction."""
        with self.db.session() as s:
            row = s.get(StudyRow, study_id)
            if row is None:
                return None, []
            return row, list(s.scalars(select(TrialRow).where(TrialRow.study_id == study_id).order_by(TrialRow.pk)))

    @retry_transient
    def with_zombies(self) -> list[StudyRow]:
        """Finished studies that still have pending/running trials."""
        live = (TrialState.PENDING.value, TrialState.RUNNING.value)
        with self.db.session() as s:  # the studies with live trials first (index 0010: the running studies, a few), then which of them finished
            ids = list(s.scalars(select(TrialRow.study_id).where(TrialRow.state.in_(live)).distinct()))
            if not ids:
                return []
            return list(s.scalars(select(StudyRow).where(StudyRow.id.in_(ids), StudyRow.status.in_([st.value for st in FINISHED]))))
