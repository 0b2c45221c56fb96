"""Idempotency keys of POST /v1/studies: claimed while their request is in flight, then bound to its study."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from service.store.engine import Database, retry_transient
from service.store.models import IdempotencyRow, now

ClaimOutcome = Literal["claimed", "replay", "in_flight", "mismatch"]
STALE_CLAIM = timedelta(seconds=120)  # a claim whose request died (process killed) is free again after this


class KeyRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @retry_transient
    def claim(self, owner: str, key: str, body_hash: str) -> tuple[ClaimOutcome, str | None]:
        """Claim an Idempotency-Key for a request: ``claimed`` (go on), ``replay`` (the key's study id),
        ``in_flight`` (another request holds it) or ``mismatch`` (the key was used with another body)."""
        try:
            with self.db.session(write=True) as s:
                s.add(IdempotencyRow(owner=owner, key=key, body_hash=body_hash, study_id=None, created_at=now()))
            return "claimed", None
        except IntegrityError:
            pass
        with self.db.session(write=True) as s:
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

    @retry_transient
    def release(self, owner: str, key: str) -> None:
        """Drop an unbound claim (its request failed validation): the key may be used again."""
        with self.db.session(write=True) as s:
            s.execute(delete(IdempotencyRow).where(IdempotencyRow.owner == owner, IdempotencyRow.key == key, IdempotencyRow.study_id.is_(None)))
