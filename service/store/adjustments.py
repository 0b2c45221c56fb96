"""Panda mode's interventions: asked for through the API, forwarded by the study's driver, applied
by the trainable at an epoch boundary (then ``after_epoch`` is set)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from service.store.engine import Database, retry_transient
from service.store.models import AdjustmentRow, EventRow, now


class AdjustmentRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @retry_transient
    def add(self, study_id: str, trial_id: str, changes: dict[str, Any], by: str) -> AdjustmentRow:
        """Record the request, and its event in the study's event stream, in one transaction."""
        row = AdjustmentRow(study_id=study_id, trial_id=trial_id, changes=changes, by=by, requested_at=now())
        with self.db.session(write=True) as s:
            s.add(row)
            s.flush()
            s.add(EventRow(study_id=study_id, trial_id=trial_id, kind="adjust_requested", data={"id": row.pk, "changes": changes, "by": by},
                           at=row.requested_at))
        return row

    @retry_transient
    def pending(self, study_id: str) -> list[AdjustmentRow]:
        with self.db.session() as s:
            return list(s.scalars(select(AdjustmentRow).where(AdjustmentRow.study_id == study_id, AdjustmentRow.after_epoch.is_(None))
                                  .order_by(AdjustmentRow.pk)))

    @retry_transient
    def applied(self, study_id: str, trial_id: str, ids: list[int], after_epoch: int) -> None:
        with self.db.session(write=True) as s:
            s.execute(update(AdjustmentRow).where(AdjustmentRow.study_id == study_id, AdjustmentRow.pk.in_(ids))
                      .values(after_epoch=after_epoch))
            s.add(EventRow(study_id=study_id, trial_id=trial_id, kind="adjusted", data={"ids": ids, "after_epoch": after_epoch}, at=now()))

    @retry_transient
    def for_trial(self, study_id: str, trial_id: str) -> list[AdjustmentRow]:
        with self.db.session() as s:
            return list(s.scalars(select(AdjustmentRow).where(AdjustmentRow.study_id == study_id, AdjustmentRow.trial_id == trial_id)
                                  .order_by(AdjustmentRow.pk)))
