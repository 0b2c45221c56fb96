"""Leases: one of several processes holds a named lease until it expires, renewing it while it
works. The API's dispatcher runs only in the process that holds ``DISPATCHER`` (service.api.dispatch),
however many API processes share the database.

Expiry is measured by the database's clock (seconds since the epoch), so the processes' clocks, on
one host or several, are never compared with each other. A holder that stops renewing (killed,
stalled) loses the lease ``ttl_s`` after its last renewal; one that stops cleanly releases it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from service.store.engine import Database, retry_transient
from service.store.models import LeaseRow

DISPATCHER = "dispatcher"


def db_clock(dialect: str) -> Any:
    """The database's time now, in seconds since the epoch (float), as an SQL expression."""
    if dialect == "postgresql":
        return func.extract("epoch", func.clock_timestamp())
    return (func.julianday("now") - 2440587.5) * 86400.0  # SQLite: millisecond resolution on every version


class LeaseRepo:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.dialect = db.engine.dialect.name

    @retry_transient
    def hold(self, name: str, holder: str, ttl_s: float, *, replacing: str | None = None) -> bool:
        """Take the lease ``name`` for ``holder``, or renew it, for ``ttl_s`` seconds from now: whether
        ``holder`` holds it now. With ``replacing``, also when that holder (known to be dead) has it.
        One statement, so two processes racing for a free lease cannot both win."""
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        expires = db_clock(self.dialect) + ttl_s
        stmt = insert(LeaseRow).values(name=name, holder=holder, expires_at=expires)
        takes = (LeaseRow.holder == holder) | (LeaseRow.expires_at < db_clock(self.dialect))
        stmt = stmt.on_conflict_do_update(
            index_elements=[LeaseRow.name],
            set_={"holder": holder, "expires_at": expires},
            where=takes | (LeaseRow.holder == replacing) if replacing is not None else takes,
        )
        with self.db.session(write=True) as s:
            if self.dialect == "postgresql":  # a row comes back only when the insert or the update happened
                return s.execute(stmt.returning(LeaseRow.holder)).first() is not None
            # SQLite: its rowcount says the same (and RETURNING needs SQLite 3.35, which some distributions lack)
            return bool(s.connection().execute(stmt).rowcount)

    @retry_transient
    def release(self, name: str, holder: str) -> bool:
        """Give the lease up now (when ``holder`` holds it), so another process takes it at its next try."""
        with self.db.session(write=True) as s:
            return bool(s.execute(delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder)).rowcount)  # type: ignore[attr-defined]

    @retry_transient
    def holder(self, name: str) -> tuple[str, float] | None:
        """Who holds the lease and for how many more seconds (None: free, or expired)."""
        left = LeaseRow.expires_at - db_clock(self.dialect)
        with self.db.session() as s:
            row = s.execute(select(LeaseRow.holder, left).where(LeaseRow.name == name)).first()
        return (row[0], float(row[1])) if row is not None and row[1] > 0 else None
