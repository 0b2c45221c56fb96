"""Indexes for the uncached reads of big studies: a study's best trials (``best``, the listing's
best per study) walk (study_id, best_value) instead of sorting every trial; its trial counts by
state come from (study_id, state) alone; an owner's newest studies (the listing behind a token) walk
(owner, created_at, id) instead of sorting all the owner's studies, definitions and all.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_caviar_trials_study_best", "caviar_trials", ["study_id", "best_value"])
    op.create_index("ix_caviar_trials_study_state", "caviar_trials", ["study_id", "state"])
    op.create_index("ix_caviar_studies_owner_created", "caviar_studies", ["owner", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_caviar_studies_owner_created", "caviar_studies")
    op.drop_index("ix_caviar_trials_study_state", "caviar_trials")
    op.drop_index("ix_caviar_trials_study_best", "caviar_trials")
