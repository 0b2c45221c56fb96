"""The store's tables (studies, trials, per-epoch metrics, API tokens, idempotency keys) and the
statuses their rows take (``service.definition`` hands those on as the study's vocabulary).

Tables are prefixed ``caviar_`` so that Optuna's own tables can live in the same database. The
schema is created by the Alembic migrations in ``migrations/``; these classes describe it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

LOCAL_OWNER = "local"  # who owns what unauthenticated loopback requests create


class StudyStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({StudyStatus.COMPLETED, StudyStatus.FAILED, StudyStatus.CANCELLED})
ACTIVE = (StudyStatus.QUEUED.value, StudyStatus.RUNNING.value)


class TrialState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED_EARLY = "stopped_early"
    FAILED = "failed"


def now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are UTC and come back timezone-aware (SQLite stores them without an offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UTCDateTime}


class StudyRow(Base):
    __tablename__ = "caviar_studies"
    __table_args__ = (Index("ix_caviar_studies_owner_created", "owner", "created_at", "id"),)  # an owner's newest first (migration 0009)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), index=True)
    owner: Mapped[str] = mapped_column(String(64), index=True, default=LOCAL_OWNER)
    resumes: Mapped[int] = mapped_column(Integer, default=0)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    ray_job_id: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    test_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # the study it was warm-started or refined from (not a foreign key: a parent may be deleted, its children stay)
    parent_id: Mapped[str | None] = mapped_column(String(32), index=True)
    extended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # last POST .../extend: earlier trials are earlier runs'


class TrialRow(Base):
    __tablename__ = "caviar_trials"
    __table_args__ = (UniqueConstraint("study_id", "trial_id"),
                      Index("ix_caviar_trials_study_best", "study_id", "best_value"),  # migration 0009
                      Index("ix_caviar_trials_study_state", "study_id", "state"),
                      Index("ix_caviar_trials_state_study", "state", "study_id"))  # the live trials, for the zombie check (0010)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("caviar_studies.id", ondelete="CASCADE"), index=True)
    trial_id: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    last_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    best_value: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    node: Mapped[str | None] = mapped_column(String(255))  # the Ray node's IP it last ran on
    trial_dir: Mapped[str | None] = mapped_column(String(512))  # its directory in the study storage (its checkpoints)
    device: Mapped[str | None] = mapped_column(String(255))  # what it trained on, as the trainable reported it: cpu, cuda:0 (...)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TrialCountRow(Base):
    """A study's number of trials in one state, kept by triggers on ``caviar_trials`` (migration
    0011): what a study's counts are read from. Never written by the application. A migration that
    rebuilds ``caviar_trials`` on SQLite must create the triggers again (see 0011)."""

    __tablename__ = "caviar_trial_counts"
    study_id: Mapped[str] = mapped_column(ForeignKey("caviar_studies.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(Integer)


class LeaseRow(Base):
    """A lease one process holds for a while (``service.store.leases``): which of several API
    processes runs the dispatcher. ``expires_at`` is in seconds since the epoch by the database's
    clock, so the processes' own clocks never compare."""

    __tablename__ = "caviar_leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Float)


class MetricRow(Base):
    __tablename__ = "caviar_metrics"
    __table_args__ = (UniqueConstraint("trial_pk", "epoch"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_pk: Mapped[int] = mapped_column(ForeignKey("caviar_trials.pk", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)


class EventRow(Base):
    """A trial's lifecycle, as it happened: started, completed, stopped_early, failed, retried. With
    caviar_metrics (its pk orders the epoch results) it is the study's event log (GET .../events)."""

    __tablename__ = "caviar_events"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("caviar_studies.id", ondelete="CASCADE"), index=True)
    trial_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class TokenRow(Base):
    """An API token: only its SHA-256 is stored (tokens are 256-bit random, so a fast hash is enough)."""

    __tablename__ = "caviar_tokens"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IdempotencyRow(Base):
    """An Idempotency-Key of POST /v1/studies: claimed (study_id NULL) while in flight, then bound to its study."""

    __tablename__ = "caviar_idempotency"
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[str | None] = mapped_column(ForeignKey("caviar_studies.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ScheduleRow(Base):
    """A study run again every ``every_s`` seconds, each run warm-started from the previous one's best."""

    __tablename__ = "caviar_schedules"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)  # as submitted (validated), without warm_start
    every_s: Mapped[int] = mapped_column(Integer)
    top_k: Mapped[int] = mapped_column(Integer)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_study_id: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ScheduleRunRow(Base):
    """One study a schedule started, and the one before it (what its drift compares with)."""

    __tablename__ = "caviar_schedule_runs"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(ForeignKey("caviar_schedules.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[str] = mapped_column(String(32))
    previous_study_id: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AdjustmentRow(Base):
    """Panda mode: a change a person asked for while a trial ran; ``after_epoch`` is set when the
    trainable applied it (it holds from the next epoch on)."""

    __tablename__ = "caviar_adjustments"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("caviar_studies.id", ondelete="CASCADE"), index=True)
    trial_id: Mapped[str] = mapped_column(String(128))
    changes: Mapped[dict[str, Any]] = mapped_column(JSON)
    by: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    after_epoch: Mapped[int | None] = mapped_column(Integer)
