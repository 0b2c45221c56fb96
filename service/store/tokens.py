"""API tokens: only a token's SHA-256 is stored (tokens are 256-bit random, so a fast hash is enough)."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy import func, select, update

from service.store.engine import Database, retry_transient
from service.store.models import TokenRow, now


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    @retry_transient
    def create(self, owner: str) -> tuple[str, str]:
        """A new token for ``owner``: returns (token id, the token). Only its hash is stored."""
        token_id, token = uuid.uuid4().hex[:12], "cav_" + secrets.token_urlsafe(32)
        with self.db.session(write=True) as s:
            s.add(TokenRow(id=token_id, owner=owner, token_hash=hash_token(token), created_at=now()))
        return token_id, token

    @retry_transient
    def owner_for(self, token: str) -> str | None:
        with self.db.session() as s:
            row = s.scalar(select(TokenRow).where(TokenRow.token_hash == hash_token(token), TokenRow.revoked_at.is_(None)))
            return row.owner if row else None

    @retry_transient
    def list_all(self) -> list[TokenRow]:
        with self.db.session() as s:
            return list(s.scalars(select(TokenRow).order_by(TokenRow.created_at)))

    @retry_transient
    def revoke(self, token_id: str) -> bool:
        with self.db.session(write=True) as s:
            return bool(s.execute(update(TokenRow).where(TokenRow.id == token_id, TokenRow.revoked_at.is_(None)).values(revoked_at=now())).rowcount)  # type: ignore[attr-defined]

    @retry_transient
    def active(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(TokenRow).where(TokenRow.revoked_at.is_(None))) or 0)
