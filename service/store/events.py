"""A study's event log, read: the epoch results (caviar_metrics, ordered by their pk) merged with
the trials' lifecycle events (caviar_events). A position in it is the pair of high-water marks
(metric pk, event pk), so a client resumes exactly where it stopped (SSE ``Last-Event-ID``)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from service.store.engine import Database, retry_transient
from service.store.models import EventRow, MetricRow, TrialRow


@dataclass(frozen=True)
class Event:
    kind: str  # epoch | trial_started | completed | stopped_early | failed | retried
    trial_id: str
    data: dict[str, Any]
    at: float  # epoch seconds
    mark: tuple[int, int]  # the position after this event: (metric pk, event pk)


class EventRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @retry_transient
    def marks(self, study_id: str) -> tuple[int, int]:
        """The log's end now."""
        with self.db.session() as s:
            m = s.scalar(select(func.max(MetricRow.pk)).join(TrialRow, MetricRow.trial_pk == TrialRow.pk).where(TrialRow.study_id == study_id))
            e = s.scalar(select(func.max(EventRow.pk)).where(EventRow.study_id == study_id))
            return int(m or 0), int(e or 0)

    @retry_transient
    def best_until(self, study_id: str, metric_pk: int, metric: str, mode: str) -> float | None:
        """The best ``metric`` among the epoch results up to ``metric_pk`` (where a resumed stream stood)."""
        with self.db.session() as s:
            values = s.scalars(select(MetricRow.values).join(TrialRow, MetricRow.trial_pk == TrialRow.pk)
                               .where(TrialRow.study_id == study_id, MetricRow.pk <= metric_pk))
            found = [float(v[metric]) for v in values if isinstance(v.get(metric), (int, float))]
        return (max(found) if mode == "max" else min(found)) if found else None

    @retry_transient
    def after(self, study_id: str, mark: tuple[int, int], limit: int = 1000) -> list[Event]:
        """Events after ``mark``, oldest first (each stream in its own order; the two merged by time)."""
        metric_pk, event_pk = mark
        with self.db.session() as s:
            epochs = s.execute(select(MetricRow.pk, TrialRow.trial_id, MetricRow.epoch, MetricRow.values)
                               .join(TrialRow, MetricRow.trial_pk == TrialRow.pk)
                               .where(TrialRow.study_id == study_id, MetricRow.pk > metric_pk).order_by(MetricRow.pk).limit(limit)).all()
            lifecycle = list(s.scalars(select(EventRow).where(EventRow.study_id == study_id, EventRow.pk > event_pk)
                                       .order_by(EventRow.pk).limit(limit)))
        # each stream stays in pk order; the two are merged by time (epoch results first on a tie)
        results = [(float(values.get("reported_at") or 0.0), "m", pk, trial_id, "epoch", {"epoch": epoch, "metrics": values})
                   for pk, trial_id, epoch, values in epochs]
        events = [(row.at.timestamp(), "e", row.pk, row.trial_id, row.kind, row.data) for row in lifecycle]
        out, m, e = [], metric_pk, event_pk
        for at, stream, pk, trial_id, kind, data in heapq.merge(results, events, key=lambda item: (item[0], item[1])):
            m, e = (pk, e) if stream == "m" else (m, pk)
            out.append(Event(kind, trial_id, data, at, (m, e)))
        return out
