"""Trials and their per-epoch metrics, as the study's driver reports them."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, Select, bindparam, delete, func, select, update
from sqlalchemy.orm import QueryableAttribute, Session

from service.pareto import minimized, order
from service.store.engine import Database, retry_transient
from service.store.models import EventRow, MetricRow, StudyRow, TrialCountRow, TrialRow, TrialState, now


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite floats are stored as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def counts_query(s: Session, study_id: str) -> dict[str, int]:
    """A study's number of trials in each state, from the counts the store's triggers keep
    (``TrialCountRow``): a few rows, whatever the number of trials."""
    return counts_many(s, [study_id])[study_id]


def counts_many(s: Session, study_ids: list[str]) -> dict[str, dict[str, int]]:
    """``counts_query`` for several studies, in one query."""
    out = {sid: {state.value: 0 for state in TrialState} for sid in study_ids}
    if study_ids:
        for sid, state, n in s.execute(_COUNTS_MANY, {"ids": study_ids}):
            out[sid][state] = n
    return out


def best_many(s: Session, study_ids: list[str], mode: str) -> dict[str, Any]:
    """Each study's best trial (``best_query`` with k = 1) for studies of one direction, in one query:
    ``best_query`` correlated with each study, walking the (study_id, best_value) index to its first row.
    Plain rows of study_id, trial_id, best_value and config only: what a listing shows of each."""
    if not study_ids:
        return {}
    return {row.study_id: row for row in s.execute(_BEST_MANY[mode], {"ids": study_ids})}


def best_query(study_id: str | ColumnElement[str] | QueryableAttribute[str], mode: str, k: int) -> Select[TrialRow]:
    """A study's k best trials, best first (failed ones never rank); ``study_id`` may be a column to correlate with."""
    order = TrialRow.best_value.desc() if mode == "max" else TrialRow.best_value.asc()
    return (select(TrialRow)
            .where(TrialRow.study_id == study_id, TrialRow.best_value.is_not(None), TrialRow.state != TrialState.FAILED.value)
            .order_by(order, TrialRow.pk).limit(k))


# a listing's statements, built once with an expanding parameter for the page's study ids (building
# and caching a statement per request cost more than running it: docs/benchmarks.md §4)
_COUNTS_MANY = select(TrialCountRow.study_id, TrialCountRow.state, TrialCountRow.n).where(
    TrialCountRow.study_id.in_(bindparam("ids", expanding=True)), TrialCountRow.n != 0)
_BEST_MANY = {
    mode: select(TrialRow.study_id, TrialRow.trial_id, TrialRow.best_value, TrialRow.config).where(TrialRow.pk.in_(
        select(best_query(StudyRow.id, mode, 1).with_only_columns(TrialRow.pk).correlate(StudyRow).scalar_subquery())
        .select_from(StudyRow).where(StudyRow.id.in_(bindparam("ids", expanding=True)))))
    for mode in ("max", "min")
}


TrialSort = Literal["trial", "state", "retries", "node", "epochs", "best_value", "started_at", "finished_at"]
SORTS: dict[str, Any] = {"trial": TrialRow.pk, "state": TrialRow.state, "retries": TrialRow.retries, "node": TrialRow.node,
         "epochs": TrialRow.epochs, "best_value": TrialRow.best_value, "started_at": TrialRow.started_at,
         "finished_at": TrialRow.finished_at}
if set(SORTS) != set(get_args(TrialSort)):  # pragma: no cover - one list of sort keys
    raise RuntimeError("TrialSort and SORTS disagree")


class TrialRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def _row(s: Session, study_id: str, trial_id: str) -> TrialRow | None:
        return s.scalar(select(TrialRow).where(TrialRow.study_id == study_id, TrialRow.trial_id == trial_id))

    @retry_transient
    def upsert(self, study_id: str, trial_id: str, *, config: dict[str, Any] | None = None, event: str | None = None,
               event_data: dict[str, Any] | None = None, **values: Any) -> None:
        """Create or update a trial; with ``event``, log that lifecycle event in the same transaction."""
        with self.db.session(write=True) as s:
            if event is not None:
                s.add(EventRow(study_id=study_id, trial_id=trial_id, kind=event, data=_finite(event_data or {}), at=now()))
            row = self._row(s, study_id, trial_id)
            if row is None:
                row = TrialRow(study_id=study_id, trial_id=trial_id, state=TrialState.PENDING.value, config=config or {}, epochs=0)
                s.add(row)
            elif config is not None:
                row.config = config
            for k, v in values.items():
                setattr(row, k, v)

    def add_epoch(self, study_id: str, trial_id: str, metrics: dict[str, Any], objective: str, mode: str) -> None:
        """Record one epoch's metrics and fold them into the trial's last/best values (idempotent per
        epoch: an epoch reported again is ignored)."""
        self.add_epochs(study_id, [(trial_id, metrics)], objective, mode)

    @retry_transient
    def add_epochs(self, study_id: str, results: list[tuple[str, dict[str, Any]]], objective: str, mode: str) -> None:
        """Many epochs of the study's trials, in order, in one transaction (the driver batches its
        writes: one commit for a batch instead of one per result); each as ``add_epoch``."""
        with self.db.session(write=True) as s:
            rows: dict[str, TrialRow] = {}
            added: set[tuple[str, int]] = set()
            for trial_id, raw in results:
                metrics = _finite(raw)
                epoch = int(metrics.get("epoch") or 0)
                row = rows.get(trial_id) or self._row(s, study_id, trial_id)
                if row is None:
                    row = TrialRow(study_id=study_id, trial_id=trial_id, state=TrialState.RUNNING.value, config={}, epochs=0)
                    s.add(row)
                    s.flush()
                rows[trial_id] = row
                fresh = (trial_id, epoch) not in added and s.scalar(
                    select(MetricRow.pk).where(MetricRow.trial_pk == row.pk, MetricRow.epoch == epoch)) is None
                if fresh:
                    s.add(MetricRow(trial_pk=row.pk, epoch=epoch, values=metrics))
                    added.add((trial_id, epoch))
                elif epoch:
                    # an epoch the trial has already: Tune ran it again (a worker lost before Tune had
                    # registered that epoch's checkpoint). The first stays, whole: the trial's last and
                    # best values remain ones its stored history shows
                    continue
                row.epochs = max(row.epochs or 0, epoch)
                row.last_metrics = metrics
                value = metrics.get(objective)
                if isinstance(value, (int, float)):
                    better = row.best_value is None or (value > row.best_value if mode == "max" else value < row.best_value)
                    if better:
                        row.best_value = float(value)

    @retry_transient
    def for_study(self, study_id: str) -> list[TrialRow]:
        with self.db.session() as s:
            return list(s.scalars(select(TrialRow).where(TrialRow.study_id == study_id).order_by(TrialRow.pk)))

    @retry_transient
    def page(self, study_id: str, *, state: str | None = None, sort: str = "trial", descending: bool = False,
             offset: int = 0, limit: int = 50) -> tuple[list[TrialRow], int]:
        """One page of a study's trials sorted in the database (``sort`` one of SORTS), with the
        total that matches; trials without a value for the key sort last either way."""
        column = SORTS[sort]
        where = [TrialRow.study_id == study_id] + ([TrialRow.state == state] if state else [])
        key = column.desc() if descending else column.asc()
        q = select(TrialRow).where(*where).order_by(column.is_(None), key, TrialRow.pk).offset(offset).limit(limit)
        with self.db.session() as s:
            return list(s.scalars(q)), int(s.scalar(select(func.count()).select_from(TrialRow).where(*where)) or 0)

    @retry_transient
    def curves(self, study_id: str, trial_ids: list[str], metric: str) -> dict[str, list[float | None]]:
        """``metric`` per epoch (epoch 1 first) of the named trials: their learning curves."""
        out: dict[str, list[float | None]] = {t: [] for t in trial_ids}
        with self.db.session() as s:
            for i in range(0, len(trial_ids), 500):  # bounded IN lists
                q = (select(TrialRow.trial_id, MetricRow.values).join(MetricRow, MetricRow.trial_pk == TrialRow.pk)
                     .where(TrialRow.study_id == study_id, TrialRow.trial_id.in_(trial_ids[i:i + 500]))
                     .order_by(TrialRow.pk, MetricRow.epoch))
                for trial_id, values in s.execute(q):
                    v = values.get(metric)
                    out[trial_id].append(float(v) if isinstance(v, (int, float)) else None)
        return out

    @retry_transient
    def get(self, study_id: str, trial_id: str) -> tuple[TrialRow, list[dict[str, Any]]] | None:
        """A trial with its per-epoch history."""
        with self.db.session() as s:
            row = self._row(s, study_id, trial_id)
            if row is None:
                return None
            history = [m.values for m in s.scalars(select(MetricRow).where(MetricRow.trial_pk == row.pk).order_by(MetricRow.epoch))]
            return row, history

    @retry_transient
    def counts(self, study_id: str) -> dict[str, int]:
        with self.db.session() as s:
            return counts_query(s, study_id)

    @retry_transient
    def best(self, study_id: str, mode: str, k: int) -> list[TrialRow]:
        with self.db.session() as s:
            return list(s.scalars(best_query(study_id, mode, k)))

    def top(self, study_id: str, objectives: list[tuple[str, str]], k: int) -> list[TrialRow]:
        """The study's k best trials: by the one objective's best value (``best``), or with several
        objectives the completed trials by non-dominated sorting, the front first and, within a
        front, the most isolated first (``service.pareto.order``): what refine narrows around and
        a warm start runs first."""
        if len(objectives) < 2:
            return self.best(study_id, objectives[0][1], k)
        done = [(t, minimized(t.last_metrics or {}, objectives)) for t in self.for_study(study_id) if t.state == TrialState.COMPLETED.value]
        done = [(t, p) for t, p in done if all(math.isfinite(v) for v in p)]
        return [done[i][0] for i in order([p for _, p in done])[:k]]

    @retry_transient
    def recovered(self, study_id: str, trial_id: str) -> None:
        """A trial failed and is retried (from its last checkpoint): count it, show it running again."""
        with self.db.session(write=True) as s:
            s.execute(update(TrialRow).where(TrialRow.study_id == study_id, TrialRow.trial_id == trial_id)
                      .values(retries=TrialRow.retries + 1, state=TrialState.RUNNING.value, error=None))
            s.add(EventRow(study_id=study_id, trial_id=trial_id, kind="retried", data={}, at=now()))

    @retry_transient
    def mark_zombies(self, study_id: str, reason: str) -> int:
        """Trials of a study that is no longer running but still marked pending/running: no process is
        behind them any more. They become failed with ``reason``; returns how many."""
        with self.db.session(write=True) as s:
            return int(s.execute(
                update(TrialRow)
                .where(TrialRow.study_id == study_id, TrialRow.state.in_((TrialState.PENDING.value, TrialState.RUNNING.value)))
                .values(state=TrialState.FAILED.value, error=reason, finished_at=now())
            ).rowcount)  # type: ignore[attr-defined]

    @retry_transient
    def forget_except(self, study_id: str, keep: set[str], started_since: datetime | None = None) -> list[str]:
        """After a resume: delete the trials Tune's saved experiment state does not know (started after
        its last save; Tune runs new trials in their place). Returns their ids. With ``started_since``
        (an extended study: this run began then) the trials of earlier runs are kept."""
        q = select(TrialRow.trial_id).where(TrialRow.study_id == study_id)
        if started_since is not None:
            q = q.where(TrialRow.started_at >= started_since)
        with self.db.session(write=True) as s:
            gone = [t for t in s.scalars(q) if t not in keep]
            if gone:
                s.execute(delete(TrialRow).where(TrialRow.study_id == study_id, TrialRow.trial_id.in_(gone)))
            return gone
