"""The database connection: engine set-up per dialect, the retry policy, and migrations.

SQLite (default) runs in WAL mode with a busy timeout, and write transactions take the write lock
up front (``BEGIN IMMEDIATE``); PostgreSQL is selected by URL (psycopg 3).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool
from tenacity import before_sleep_log, retry, retry_if_exception, stop_after_delay, wait_random_exponential

VERSION_TABLE = "caviar_alembic_version"  # Optuna keeps its own alembic_version beside ours
SQLITE_BUSY_TIMEOUT_S = 30.0  # default: how long one SQLite statement waits for another writer's lock
RETRY_FOR_S = 5.0  # how long, from its first attempt, a store call is retried (jittered exponential backoff, 10 ms .. 1 s)
log = logging.getLogger("caviar.store")
P = ParamSpec("P")
R = TypeVar("R")


def _transient(exc: BaseException) -> bool:
    """A database momentarily locked (SQLite) or a transaction that lost a race (PostgreSQL)."""
    if not isinstance(exc, OperationalError):
        return False
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return any(word in text for word in ("locked", "busy", "deadlock", "could not serialize"))


def retry_transient(fn: Callable[P, R]) -> Callable[P, R]:
    """Retry a whole store call on a transient error that fails fast (a PostgreSQL deadlock or
    serialization failure, SQLite's 'locked' on a lock upgrade) with backoff, for up to
    ``RETRY_FOR_S`` from the first attempt. Against a SQLite write lock held by another writer, a
    statement itself waits the busy timeout (``SQLITE_BUSY_TIMEOUT_S``, 30 s by default): a lock that
    is never released makes a call give up after about that long (tests/service/test_store.py
    measures the rule), which the API answers with 503 and Retry-After."""
    return retry(
        retry=retry_if_exception(_transient),
        wait=wait_random_exponential(multiplier=0.01, max=1.0),
        stop=stop_after_delay(RETRY_FOR_S),
        before_sleep=before_sleep_log(log, logging.INFO),
        reraise=True,
    )(fn)


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the driver we install)."""
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


# an integer past 64 bits has 20 digits or more in a row (a float as json writes it, at most 17): every
# digit made "0", then a search for 20 of them (2 us for a 2 KB definition; a regular expression took 35)
_DIGITS_AS_ZERO = bytes(ord("0") if ord("0") <= i <= ord("9") else i for i in range(256))
_TWENTY_DIGITS = b"0" * 20


def json_loads(text: str | bytes) -> Any:
    """The store's JSON columns, decoded by orjson (a page of 50 study definitions: about 5x faster
    than ``json.loads``). What orjson would read differently falls back to ``json.loads``, so every
    value the store wrote reads back as it was: integers past 64 bits (orjson makes them floats) and
    anything it refuses (NaN, Infinity)."""
    if _TWENTY_DIGITS in (text.encode() if isinstance(text, str) else text).translate(_DIGITS_AS_ZERO):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def make_engine(url: str, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # a pool as large as the API's thread pool (40): connections are kept, not opened per request
        engine = create_engine(url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False}, pool_size=40, max_overflow=8,
                               json_deserializer=json_loads)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
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
    return create_engine(sqlalchemy_url(url), pool_pre_ping=True, json_deserializer=json_loads)


class Database:
    """An engine and its sessions: one short transaction per ``session()``. Thread-safe."""

    def __init__(self, url: str, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
        self.url = url
        self.engine = make_engine(url, busy_timeout_s)
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

    def dispose(self) -> None:
        self.engine.dispose()


MIGRATION_LOCK = 0x43415649  # PostgreSQL advisory lock key ("CAVI") held while migrating


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision. On PostgreSQL under an advisory lock: API
    replicas that start together migrate one after the other (the later ones find nothing to do)
    instead of racing to create the same tables. (A SQLite store is one host's: `caviar serve`
    migrates it once, before its workers start.)"""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if not sqlalchemy_url(url).startswith("postgresql"):
        command.upgrade(cfg, "head")
        return
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        # autocommit: the lock's session holds it without an open transaction (idle_in_transaction_session_timeout)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                command.upgrade(cfg, "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    finally:
        engine.dispose()
