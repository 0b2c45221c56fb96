"""Owners, API tokens, idempotency keys, resume and retry counts.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("caviar_studies") as t:
        t.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default="local"))
        t.add_column(sa.Column("resumes", sa.Integer, nullable=False, server_default="0"))
        t.create_index("ix_caviar_studies_owner", ["owner"])
    with op.batch_alter_table("caviar_trials") as t:
        t.add_column(sa.Column("retries", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "caviar_tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
    )
    op.create_table(
        "caviar_idempotency",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("study_id", sa.String(32), sa.ForeignKey("caviar_studies.id", ondelete="CASCADE")),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("caviar_idempotency")
    op.drop_table("caviar_tokens")
    with op.batch_alter_table("caviar_trials") as t:
        t.drop_column("retries")
    with op.batch_alter_table("caviar_studies") as t:
        t.drop_index("ix_caviar_studies_owner")
        t.drop_column("resumes")
        t.drop_column("owner")
