"""The trials' lifecycle events (started, completed, stopped early, failed, retried): with the
epoch results, the study's event stream.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "caviar_events",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_id", sa.String(32), sa.ForeignKey("caviar_studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("trial_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_caviar_events_study_id", "caviar_events", ["study_id"])


def downgrade() -> None:
    op.drop_index("ix_caviar_events_study_id", "caviar_events")
    op.drop_table("caviar_events")
