"""Studies, trials and per-epoch metrics.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "caviar_studies",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("ray_job_id", sa.String(128)),
        sa.Column("error", sa.Text),
        sa.Column("test_metrics", sa.JSON),
        sa.Column("created_at", TS, nullable=False, index=True),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
    )
    op.create_table(
        "caviar_trials",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_id", sa.String(32), sa.ForeignKey("caviar_studies.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("trial_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("epochs", sa.Integer, nullable=False),
        sa.Column("last_metrics", sa.JSON),
        sa.Column("best_value", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.UniqueConstraint("study_id", "trial_id"),
    )
    op.create_table(
        "caviar_metrics",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("trial_pk", sa.Integer, sa.ForeignKey("caviar_trials.pk", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("values", sa.JSON, nullable=False),
        sa.UniqueConstraint("trial_pk", "epoch"),
    )


def downgrade() -> None:
    op.drop_table("caviar_metrics")
    op.drop_table("caviar_trials")
    op.drop_table("caviar_studies")
