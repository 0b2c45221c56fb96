"""Where a trial's checkpoints are (its directory under the study's experiment in the storage) and
the device it trained on.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("caviar_trials") as t:
        t.add_column(sa.Column("trial_dir", sa.String(512), nullable=True))
        t.add_column(sa.Column("device", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("caviar_trials") as t:
        t.drop_column("device")
        t.drop_column("trial_dir")
