"""The store: the only code that speaks SQL.

Studies, trials and per-epoch metrics are rows (tables prefixed ``caviar_`` so that Optuna's own
tables can live in the same database). SQLite (default) runs in WAL mode with a busy timeout;
PostgreSQL is selected by URL. The schema is created by Alembic migrations (``migrate``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, ParamSpec, TypeVar

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
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from service.states import FINISHED, StudyStatus, TrialState

VERSION_TABLE = "caviar_alembic_version"  # Optuna keeps its own alembic_version beside ours
LOCAL_OWNER = "local"  # who owns what unauthenticated loopback requests create
log = logging.getLogger("caviar.store")
P = ParamSpec("P")
R = TypeVar("R")


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
    retries: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class MetricRow(Base):
    __tablename__ = "caviar_metrics"
    __table_args__ = (UniqueConstraint("trial_pk", "epoch"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_pk: Mapped[int] = mapped_column(ForeignKey("caviar_trials.pk", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)


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


ClaimOutcome = Literal["claimed", "replay", "in_flight", "mismatch"]
STALE_CLAIM = timedelta(seconds=120)  # a claim whose request died (process killed) is free again after this


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return "locked" in text or "busy" in text or "deadlock" in text or "could not serialize" in text


def retry_locked(fn: Callable[P, R]) -> Callable[P, R]:
    """Retry a whole store call when the database is momentarily locked (SQLite) or a transaction
    lost a race (PostgreSQL deadlock/serialization), with jittered exponential backoff. What still
    fails after ~10 s reaches the API as 503 with Retry-After, never as 500."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        delay = 0.01
        for attempt in range(12):
            try:
                return fn(*args, **kwargs)
            except OperationalError as exc:
                if not _locked(exc) or attempt == 11:
                    raise
                log.info("store busy (%s), retrying %s", exc.orig, fn.__name__)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    return wrapper


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite floats are stored as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the driver we install)."""
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


OPTUNA_STORAGES = ("journal", "database")


def optuna_journal(data_dir: Path, study_id: str) -> Path:
    """Where a study's Optuna journal lives (``optuna-dashboard <this file>`` opens it)."""
    return data_dir / "optuna" / f"{study_id}.journal"


def optuna_storage(kind: str, database_url: str, data_dir: Path, study_id: str) -> Any:
    """The Optuna storage of a study's sampler (the study is ``caviar-<study id>`` in it).

    ``journal`` (the default): Optuna's JournalStorage, an append-only file in the data directory
    of the node that runs the study's driver. ``database``: Optuna's RDBStorage in Caviar's own
    database. The journal costs a file append per write where the database costs a transaction per
    suggested parameter: at 1,000 trials a TPE trial's sampler and store cost is 80 ms against
    115 ms on SQLite and 93 against 184 ms on PostgreSQL (docs/benchmarks.md §5).
    """
    import optuna

    if kind == "database":
        return optuna.storages.RDBStorage(
            sqlalchemy_url(database_url),
            engine_kwargs={"connect_args": {"timeout": 30}} if database_url.startswith("sqlite") else {},
        )
    if kind != "journal":
        raise ValueError(f"CAVIAR_OPTUNA_STORAGE must be one of {', '.join(OPTUNA_STORAGES)}, not {kind!r}")
    from optuna.storages.journal import JournalFileBackend

    path = optuna_journal(data_dir, study_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # a pool as large as the API's thread pool (40): connections are kept, not opened per request
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=40, max_overflow=8)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # a write transaction takes the write lock up front (BEGIN IMMEDIATE) so that it waits
            # for the busy timeout instead of failing at once with "database is locked" when it
            # upgrades from a read lock that another writer has made stale
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("caviar_write") else "BEGIN")

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
    def session(self, write: bool = False) -> Iterator[Session]:
        with self._sessions.begin() as s:
            if write:
                s.connection(execution_options={"caviar_write": True})
            yield s

    def ping(self) -> None:
        with self.session() as s:
            s.execute(select(1))

    # -- studies ------------------------------------------------------------------------------

    @retry_locked
    def create_study(self, name: str, definition: dict[str, Any], owner: str = LOCAL_OWNER, idempotency_key: str | None = None) -> StudyRow:
        """Insert a queued study; with ``idempotency_key`` (claimed before) bind the key to it in the same transaction."""
        row = StudyRow(
            id=uuid.uuid4().hex[:16], name=name, status=StudyStatus.QUEUED.value, owner=owner, resumes=0,
            definition=definition, created_at=now(),
        )
        with self.session(write=True) as s:
            s.add(row)
            if idempotency_key is not None:
                s.flush()
                s.execute(update(IdempotencyRow).where(IdempotencyRow.owner == owner, IdempotencyRow.key == idempotency_key).values(study_id=row.id))
        return row

    @retry_locked
    def owner_usage(self, owner: str) -> tuple[int, int]:
        """(studies queued or running, their summed max_concurrent_trials) of one owner: what quotas count."""
        active = (StudyStatus.QUEUED.value, StudyStatus.RUNNING.value)
        with self.session() as s:
            rows = list(s.scalars(select(StudyRow.definition).where(StudyRow.owner == owner, StudyRow.status.in_(active))))
        return len(rows), sum(int((d.get("budget") or {}).get("max_concurrent_trials") or 1) for d in rows)

    # -- idempotency keys ---------------------------------------------------------------------

    @retry_locked
    def claim_key(self, owner: str, key: str, body_hash: str) -> tuple[ClaimOutcome, str | None]:
        """Claim an Idempotency-Key for a request: ``claimed`` (go on), ``replay`` (the key's study id),
        ``in_flight`` (another request holds it) or ``mismatch`` (the key was used with another body)."""
        try:
            with self.session(write=True) as s:
                s.add(IdempotencyRow(owner=owner, key=key, body_hash=body_hash, study_id=None, created_at=now()))
            return "claimed", None
        except IntegrityError:
            pass
        with self.session(write=True) as s:
            row = s.get(IdempotencyRow, (owner, key))
            if row is None:  # released meanwhile: take it
                s.add(IdempotencyRow(owner=owner, key=key, body_hash=body_hash, study_id=None, created_at=now()))
                return "claimed", None
            if row.body_hash != body_hash:
                return "mismatch", row.study_id
            if row.study_id is not None:
                return "replay", row.study_id
            if now() - row.created_at > STALE_CLAIM:  # its request died mid-way
                row.created_at = now()
                return "claimed", None
            return "in_flight", None

    @retry_locked
    def release_key(self, owner: str, key: str) -> None:
        """Drop an unbound claim (its request failed validation): the key may be used again."""
        with self.session(write=True) as s:
            s.execute(delete(IdempotencyRow).where(IdempotencyRow.owner == owner, IdempotencyRow.key == key, IdempotencyRow.study_id.is_(None)))

    # -- API tokens ---------------------------------------------------------------------------

    @retry_locked
    def create_token(self, owner: str) -> tuple[str, str]:
        """A new token for ``owner``: returns (token id, the token). Only its hash is stored."""
        token_id, token = uuid.uuid4().hex[:12], "cav_" + secrets.token_urlsafe(32)
        with self.session(write=True) as s:
            s.add(TokenRow(id=token_id, owner=owner, token_hash=hash_token(token), created_at=now()))
        return token_id, token

    @retry_locked
    def owner_for_token(self, token: str) -> str | None:
        with self.session() as s:
            row = s.scalar(select(TokenRow).where(TokenRow.token_hash == hash_token(token), TokenRow.revoked_at.is_(None)))
            return row.owner if row else None

    @retry_locked
    def tokens(self) -> list[TokenRow]:
        with self.session() as s:
            return list(s.scalars(select(TokenRow).order_by(TokenRow.created_at)))

    @retry_locked
    def revoke_token(self, token_id: str) -> bool:
        with self.session(write=True) as s:
            return bool(s.execute(update(TokenRow).where(TokenRow.id == token_id, TokenRow.revoked_at.is_(None)).values(revoked_at=now())).rowcount)  # type: ignore[attr-defined]

    @retry_locked
    def active_tokens(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(TokenRow).where(TokenRow.revoked_at.is_(None))) or 0)

    @retry_locked
    def get_study(self, study_id: str) -> StudyRow | None:
        with self.session() as s:
            return s.get(StudyRow, study_id)

    @retry_locked
    def list_studies(self, status: str | None, offset: int, limit: int, owner: str | None = None) -> tuple[list[StudyRow], int]:
        q = select(StudyRow)
        count = select(func.count()).select_from(StudyRow)
        if owner is not None:
            q, count = q.where(StudyRow.owner == owner), count.where(StudyRow.owner == owner)
        if status:
            q, count = q.where(StudyRow.status == status), count.where(StudyRow.status == status)
        with self.session() as s:
            rows = list(s.scalars(q.order_by(StudyRow.created_at.desc(), StudyRow.id).offset(offset).limit(limit)))
            return rows, int(s.scalar(count) or 0)

    @retry_locked
    def studies_with_status(self, *statuses: str, finished_after: datetime | None = None) -> list[StudyRow]:
        q = select(StudyRow).where(StudyRow.status.in_(statuses))
        if finished_after is not None:
            q = q.where(StudyRow.finished_at >= finished_after)
        with self.session() as s:
            return list(s.scalars(q))

    @retry_locked
    def update_study(self, study_id: str, *, only_if: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Update a study; with ``only_if`` the update happens only from those statuses (returns whether it did)."""
        stmt = update(StudyRow).where(StudyRow.id == study_id)
        if only_if:
            stmt = stmt.where(StudyRow.status.in_(only_if))
        with self.session(write=True) as s:
            return bool(s.execute(stmt.values(**values)).rowcount)  # type: ignore[attr-defined]

    @retry_locked
    def finish_study(self, study_id: str, status: StudyStatus, error: str | None = None) -> bool:
        """Mark a running/queued study finished; a study already finished (e.g. cancelled) keeps its status."""
        unfinished = tuple(s.value for s in StudyStatus if s not in FINISHED)
        return self.update_study(study_id, only_if=unfinished, status=status.value, error=error, finished_at=now())

    # -- trials -------------------------------------------------------------------------------

    def _trial(self, s: Session, study_id: str, trial_id: str) -> TrialRow | None:
        return s.scalar(select(TrialRow).where(TrialRow.study_id == study_id, TrialRow.trial_id == trial_id))

    @retry_locked
    def upsert_trial(self, study_id: str, trial_id: str, *, config: dict[str, Any] | None = None, **values: Any) -> None:
        with self.session(write=True) as s:
            row = self._trial(s, study_id, trial_id)
            if row is None:
                row = TrialRow(study_id=study_id, trial_id=trial_id, state=TrialState.PENDING.value, config=config or {}, epochs=0)
                s.add(row)
            elif config is not None:
                row.config = config
            for k, v in values.items():
                setattr(row, k, v)

    @retry_locked
    def add_epoch(self, study_id: str, trial_id: str, metrics: dict[str, Any], objective: str, mode: str) -> None:
        """Record one epoch's metrics and fold them into the trial's last/best values (idempotent per epoch)."""
        metrics = _finite(metrics)
        epoch = int(metrics.get("epoch") or 0)
        with self.session(write=True) as s:
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

    @retry_locked
    def trials(self, study_id: str) -> list[TrialRow]:
        with self.session() as s:
            return list(s.scalars(select(TrialRow).where(TrialRow.study_id == study_id).order_by(TrialRow.pk)))

    @retry_locked
    def trial(self, study_id: str, trial_id: str) -> tuple[TrialRow, list[dict[str, Any]]] | None:
        with self.session() as s:
            row = self._trial(s, study_id, trial_id)
            if row is None:
                return None
            history = [m.values for m in s.scalars(select(MetricRow).where(MetricRow.trial_pk == row.pk).order_by(MetricRow.epoch))]
            return row, history

    @staticmethod
    def _counts(s: Session, study_id: str) -> dict[str, int]:
        counts = {state.value: 0 for state in TrialState}
        for state, n in s.execute(select(TrialRow.state, func.count()).where(TrialRow.study_id == study_id).group_by(TrialRow.state)):
            counts[state] = n
        return counts

    @staticmethod
    def _best(s: Session, study_id: str, mode: str, k: int) -> list[TrialRow]:
        order = TrialRow.best_value.desc() if mode == "max" else TrialRow.best_value.asc()
        return list(
            s.scalars(
                select(TrialRow)
                .where(TrialRow.study_id == study_id, TrialRow.best_value.is_not(None), TrialRow.state != TrialState.FAILED.value)
                .order_by(order, TrialRow.pk)
                .limit(k)
            )
        )

    @retry_locked
    def trial_counts(self, study_id: str) -> dict[str, int]:
        with self.session() as s:
            return self._counts(s, study_id)

    @retry_locked
    def best_trials(self, study_id: str, mode: str, k: int) -> list[TrialRow]:
        with self.session() as s:
            return self._best(s, study_id, mode, k)

    @retry_locked
    def study_view(self, study_id: str) -> tuple[StudyRow, dict[str, int], TrialRow | None] | None:
        """A study with its trial counts and best trial so far, in one read transaction (what GET
        /v1/studies/{id} shows: one session instead of three)."""
        with self.session() as s:
            row = s.get(StudyRow, study_id)
            if row is None:
                return None
            best = self._best(s, study_id, row.definition.get("objective", {}).get("mode", "max"), 1)
            return row, self._counts(s, study_id), best[0] if best else None

    @retry_locked
    def study_trials(self, study_id: str) -> tuple[StudyRow | None, list[TrialRow]]:
        """A study and its trials in one read transaction."""
        with self.session() as s:
            row = s.get(StudyRow, study_id)
            if row is None:
                return None, []
            return row, list(s.scalars(select(TrialRow).where(TrialRow.study_id == study_id).order_by(TrialRow.pk)))

    @retry_locked
    def trial_recovered(self, study_id: str, trial_id: str) -> None:
        """A trial failed and is retried (from its last checkpoint): count it, show it running again."""
        with self.session(write=True) as s:
            s.execute(update(TrialRow).where(TrialRow.study_id == study_id, TrialRow.trial_id == trial_id)
                      .values(retries=TrialRow.retries + 1, state=TrialState.RUNNING.value, error=None))

    @retry_locked
    def mark_zombies(self, study_id: str, reason: str) -> int:
        """Trials of a study that is no longer running but still marked pending/running: no process is
        behind them any more. They become failed with ``reason``; returns how many."""
        with self.session(write=True) as s:
            return int(s.execute(
                update(TrialRow)
                .where(TrialRow.study_id == study_id, TrialRow.state.in_((TrialState.PENDING.value, TrialState.RUNNING.value)))
                .values(state=TrialState.FAILED.value, error=reason, finished_at=now())
            ).rowcount)  # type: ignore[attr-defined]

    @retry_locked
    def studies_with_zombies(self) -> list[StudyRow]:
        """Finished studies that still have pending/running trials."""
        live = (TrialState.PENDING.value, TrialState.RUNNING.value)
        finished = tuple(st.value for st in FINISHED)
        with self.session() as s:
            ids = select(TrialRow.study_id).where(TrialRow.state.in_(live)).distinct()
            return list(s.scalars(select(StudyRow).where(StudyRow.id.in_(ids), StudyRow.status.in_(finished))))

    @retry_locked
    def forget_trials_except(self, study_id: str, keep: set[str]) -> list[str]:
        """After a resume: delete the trials Tune's saved experiment state does not know (started after
        its last save; Tune runs new trials in their place). Returns their ids."""
        with self.session(write=True) as s:
            gone = [t for t in s.scalars(select(TrialRow.trial_id).where(TrialRow.study_id == study_id)) if t not in keep]
            if gone:
                s.execute(delete(TrialRow).where(TrialRow.study_id == study_id, TrialRow.trial_id.in_(gone)))
            return gone
