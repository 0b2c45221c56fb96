"""The store: the only code that speaks SQL.

Studies, trials and per-epoch metrics are rows (tables prefixed ``caviar_`` so that Optuna's own
tables can live in the same database). SQLite (default) runs in WAL mode with a busy timeout;
PostgreSQL is selected by URL. The schema is created by Alembic migrations (``migrate``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from service.schemas import FINISHED, StudyStatus, TrialState

VERSION_TABLE = "caviar_alembic_version"  # Optuna keeps its own alembic_version beside ours


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class StudyRow(Base):
    __tablename__ = "caviar_studies"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), index=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    ray_job_id: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    test_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TrialRow(Base):
    __tablename__ = "caviar_trials"
    __table_args__ = (UniqueConstraint("study_id", "trial_id"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("caviar_studies.id", ondelete="CASCADE"), index=True)
    trial_id: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    last_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    best_value: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MetricRow(Base):
    __tablename__ = "caviar_metrics"
    __table_args__ = (UniqueConstraint("trial_pk", "epoch"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_pk: Mapped[int] = mapped_column(ForeignKey("caviar_trials.pk", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite floats are stored as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the driver we install)."""
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(sqlalchemy_url(url), pool_pre_ping=True)


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


class Store:
    """Repository of studies, trials and metrics. Thread-safe; one short transaction per call."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def ping(self) -> None:
        with self.session() as s:
            s.execute(select(1))

    # -- studies ------------------------------------------------------------------------------

    def create_study(self, name: str, definition: dict[str, Any]) -> StudyRow:
        row = StudyRow(
            id=uuid.uuid4().hex[:16], name=name, status=StudyStatus.QUEUED.value,
            definition=definition, created_at=now(),
        )
        with self.session() as s:
            s.add(row)
        return row

    def get_study(self, study_id: str) -> StudyRow | None:
        with self.session() as s:
            return s.get(StudyRow, study_id)

    def list_studies(self, status: str | None, offset: int, limit: int) -> tuple[list[StudyRow], int]:
        q = select(StudyRow)
        count = select(func.count()).select_from(StudyRow)
        if status:
            q, count = q.where(StudyRow.status == status), count.where(StudyRow.status == status)
        with self.session() as s:
            rows = list(s.scalars(q.order_by(StudyRow.created_at.desc(), StudyRow.id).offset(offset).limit(limit)))
            return rows, int(s.scalar(count) or 0)

    def studies_with_status(self, *statuses: str, finished_after: datetime | None = None) -> list[StudyRow]:
        q = select(StudyRow).where(StudyRow.status.in_(statuses))
        if finished_after is not None:
            q = q.where(StudyRow.finished_at >= finished_after)
        with self.session() as s:
            return list(s.scalars(q))

    def update_study(self, study_id: str, *, only_if: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Update a study; with ``only_if`` the update happens only from those statuses (returns whether it did)."""
        stmt = update(StudyRow).where(StudyRow.id == study_id)
        if only_if:
            stmt = stmt.where(StudyRow.status.in_(only_if))
        with self.session() as s:
            return bool(s.execute(stmt.values(**values)).rowcount)  # type: ignore[attr-defined]

    def finish_study(self, study_id: str, status: StudyStatus, error: str | None = None) -> bool:
        """Mark a running/queued study finished; a study already finished (e.g. cancelled) keeps its status."""
        unfinished = tuple(s.value for s in StudyStatus if s not in FINISHED)
        return self.update_study(study_id, only_if=unfinished, status=status.value, error=error, finished_at=now())

    # -- trials -------------------------------------------------------------------------------

    def _trial(self, s: Session, study_id: str, trial_id: str) -> TrialRow | None:
        return s.scalar(select(TrialRow).where(TrialRow.study_id == study_id, TrialRow.trial_id == trial_id))

    def upsert_trial(self, study_id: str, trial_id: str, *, config: dict[str, Any] | None = None, **values: Any) -> None:
        with self.session() as s:
            row = self._trial(s, study_id, trial_id)
            if row is None:
                row = TrialRow(study_id=study_id, trial_id=trial_id, state=TrialState.PENDING.value, config=config or {}, epochs=0)
                s.add(row)
            elif config is not None:
                row.config = config
            for k, v in values.items():
                setattr(row, k, v)

    def add_epoch(self, study_id: str, trial_id: str, metrics: dict[str, Any], objective: str, mode: str) -> None:
        """Record one epoch's metrics and fold them into the trial's last/best values (idempotent per epoch)."""
        metrics = _finite(metrics)
        epoch = int(metrics.get("epoch") or 0)
        with self.session() as s:
            row = self._trial(s, study_id, trial_id)
            if row is None:
                row = TrialRow(study_id=study_id, trial_id=trial_id, state=TrialState.RUNNING.value, config={}, epochs=0)
                s.add(row)
                s.flush()
            exists = s.scalar(select(MetricRow.pk).where(MetricRow.trial_pk == row.pk, MetricRow.epoch == epoch))
            if exists is None:
                s.add(MetricRow(trial_pk=row.pk, epoch=epoch, values=metrics))
            row.epochs = max(row.epochs or 0, epoch)
            row.last_metrics = metrics
            value = metrics.get(objective)
            if isinstance(value, (int, float)):
                better = row.best_value is None or (value > row.best_value if mode == "max" else value < row.best_value)
                if better:
                    row.best_value = float(value)

    def trials(self, study_id: str) -> list[TrialRow]:
        with self.session() as s:
            return list(s.scalars(select(TrialRow).where(TrialRow.study_id == study_id).order_by(TrialRow.pk)))

    def trial(self, study_id: str, trial_id: str) -> tuple[TrialRow, list[dict[str, Any]]] | None:
        with self.session() as s:
            row = self._trial(s, study_id, trial_id)
            if row is None:
                return None
            history = [m.values for m in s.scalars(select(MetricRow).where(MetricRow.trial_pk == row.pk).order_by(MetricRow.epoch))]
            return row, history

    def trial_counts(self, study_id: str) -> dict[str, int]:
        counts = {state.value: 0 for state in TrialState}
        with self.session() as s:
            for state, n in s.execute(
                select(TrialRow.state, func.count()).where(TrialRow.study_id == study_id).group_by(TrialRow.state)
            ):
                counts[state] = n
        return counts

    def best_trials(self, study_id: str, mode: str, k: int) -> list[TrialRow]:
        order = TrialRow.best_value.desc() if mode == "max" else TrialRow.best_value.asc()
        with self.session() as s:
            return list(
                s.scalars(
                    select(TrialRow)
                    .where(TrialRow.study_id == study_id, TrialRow.best_value.is_not(None), TrialRow.state != TrialState.FAILED.value)
                    .order_by(order, TrialRow.pk)
                    .limit(k)
                )
            )
