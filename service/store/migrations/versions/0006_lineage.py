"""Study lineage and extensions: the study a study was warm-started or refined from (parent_id),
and when it was last extended with more trials (extended_at: trials started before it belong to
earlier runs, which a resumed driver keeps).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("caviar_studies") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("extended_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_caviar_studies_parent_id", "caviar_studies", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_caviar_studies_parent_id", "caviar_studies")
    with op.batch_alter_table("caviar_studies") as batch:
        batch.drop_column("extended_at")
        batch.drop_column("parent_id")
