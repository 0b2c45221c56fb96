"""Schedules: a study definition run again every so often (scheduled re-tuning), and their runs."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from service.store.engine import Database, retry_transient
from service.store.models import ScheduleRow, ScheduleRunRow


class ScheduleRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @retry_transient
    def create(self, owner: str, name: str, definition: dict[str, Any], every_s: int, top_k: int, first_run_at: datetime,
               created_at: datetime) -> ScheduleRow:
        row = ScheduleRow(id=uuid.uuid4().hex[:16], owner=owner, name=name, definition=definition, every_s=every_s, top_k=top_k,
                          paused=False, next_run_at=first_run_at, created_at=created_at)
        with self.db.session(write=True) as s:
            s.add(row)
        return row

    @retry_transient
    def get(self, schedule_id: str) -> ScheduleRow | None:
        with self.db.session() as s:
            return s.get(ScheduleRow, schedule_id)

    @retry_transient
    def for_owner(self, owner: str | None) -> list[ScheduleRow]:
        q = select(ScheduleRow).order_by(ScheduleRow.created_at)
        with self.db.session() as s:
            return list(s.scalars(q.where(ScheduleRow.owner == owner) if owner is not None else q))

    @retry_transient
    def due(self, at: datetime) -> list[ScheduleRow]:
        with self.db.session() as s:
            return list(s.scalars(select(ScheduleRow).where(ScheduleRow.paused.is_(False), ScheduleRow.next_run_at <= at)))

    @retry_transient
    def claim(self, row: ScheduleRow, at: datetime) -> datetime | None:
        """Move a due schedule's next run past ``at`` (by whole periods: runs missed while the service
        was down are not made up in a burst), only if no other process did: the new next run, or
        None when another process claimed it first."""
        step = timedelta(seconds=row.every_s)
        nxt = row.next_run_at + step
        if nxt <= at:
            nxt += step * ((at - nxt) // step + 1)
        with self.db.session(write=True) as s:
            done = s.execute(update(ScheduleRow).where(ScheduleRow.id == row.id, ScheduleRow.next_run_at == row.next_run_at)
                             .values(next_run_at=nxt)).rowcount  # type: ignore[attr-defined]
        return nxt if done else None

    @retry_transient
    def record_run(self, schedule_id: str, study_id: str, previous: str | None, at: datetime) -> None:
        with self.db.session(write=True) as s:
            s.add(ScheduleRunRow(schedule_id=schedule_id, study_id=study_id, previous_study_id=previous, started_at=at))
            s.execute(update(ScheduleRow).where(ScheduleRow.id == schedule_id).values(last_study_id=study_id, last_error=None))

    @retry_transient
    def runs(self, schedule_ids: list[str]) -> dict[str, list[ScheduleRunRow]]:
        """Each schedule's runs, oldest first, in one query whatever the number of schedules."""
        out: dict[str, list[ScheduleRunRow]] = {i: [] for i in schedule_ids}
        if schedule_ids:
            with self.db.session() as s:
                for run in s.scalars(select(ScheduleRunRow).where(ScheduleRunRow.schedule_id.in_(schedule_ids)).order_by(ScheduleRunRow.pk)):
                    out[run.schedule_id].append(run)
        return out

    @retry_transient
    def update(self, schedule_id: str, **values: Any) -> bool:
        with self.db.session(write=True) as s:
            return bool(s.execute(update(ScheduleRow).where(ScheduleRow.id == schedule_id).values(**values)).rowcount)  # type: ignore[attr-defined]

    @retry_transient
    def delete(self, schedule_id: str) -> bool:
        with self.db.session(write=True) as s:
            s.execute(delete(ScheduleRunRow).where(ScheduleRunRow.schedule_id == schedule_id))
            return bool(s.execute(delete(ScheduleRow).where(ScheduleRow.id == schedule_id)).rowcount)  # type: ignore[attr-defined]
