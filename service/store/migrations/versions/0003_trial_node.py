"""The node a trial ran on (its latest, after retries).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("caviar_trials") as t:
        t.add_column(sa.Column("node", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("caviar_trials") as t:
        t.drop_column("node")
