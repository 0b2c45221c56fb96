"""Panda mode: the changes a person asked for while a trial ran, and when each applied.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "caviar_adjustments",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_id", sa.String(32), sa.ForeignKey("caviar_studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("trial_id", sa.String(128), nullable=False),
        sa.Column("changes", sa.JSON, nullable=False),
        sa.Column("by", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("after_epoch", sa.Integer, nullable=True),
    )
    op.create_index("ix_caviar_adjustments_study_id", "caviar_adjustments", ["study_id"])


def downgrade() -> None:
    op.drop_table("caviar_adjustments")
