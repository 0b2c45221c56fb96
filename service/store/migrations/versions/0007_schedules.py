"""Scheduled re-tuning: schedules and the studies each started.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "caviar_schedules",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("every_s", sa.Integer, nullable=False),
        sa.Column("top_k", sa.Integer, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_study_id", sa.String(32), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_caviar_schedules_owner", "caviar_schedules", ["owner"])
    op.create_index("ix_caviar_schedules_next_run_at", "caviar_schedules", ["next_run_at"])
    op.create_table(
        "caviar_schedule_runs",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("schedule_id", sa.String(16), sa.ForeignKey("caviar_schedules.id", ondelete="CASCADE"), nullable=False),
        sa.Column("study_id", sa.String(32), nullable=False),
        sa.Column("previous_study_id", sa.String(32), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_caviar_schedule_runs_schedule_id", "caviar_schedule_runs", ["schedule_id"])


def downgrade() -> None:
    op.drop_table("caviar_schedule_runs")
    op.drop_table("caviar_schedules")
