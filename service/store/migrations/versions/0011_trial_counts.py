"""Each study's trial counts by state, kept in ``caviar_trial_counts`` by triggers on
``caviar_trials``, so a study's counts (the listing's, a study's view) are read as a handful of rows
instead of counted over all its trials: 0.6 ms of a listing's 4 ms with one 10,000-trial study on
the page, and growing with the study (docs/benchmarks.md §4). The triggers run in the writing
transaction, whatever writes (the driver, the dispatcher's zombie check, a resume's cleanup), so
the counts are the trials' at every commit. On PostgreSQL the trials are locked against writes
from the backfill to the triggers' creation, so that no write falls between the two (SQLite's
migration holds its one write lock throughout). A row whose count falls to 0 stays, at 0.

A migration that rebuilds ``caviar_trials`` on SQLite (Alembic's batch mode, for a column dropped
or altered) drops these triggers with the old table: it must create them again (``SQLITE``).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ADD = ("INSERT INTO caviar_trial_counts (study_id, state, n) VALUES (NEW.study_id, NEW.state, 1) "
       "ON CONFLICT (study_id, state) DO UPDATE SET n = caviar_trial_counts.n + 1")
REMOVE = "UPDATE caviar_trial_counts SET n = n - 1 WHERE study_id = OLD.study_id AND state = OLD.state"

SQLITE = [
    f"CREATE TRIGGER caviar_trials_count_insert AFTER INSERT ON caviar_trials BEGIN {ADD}; END",
    "CREATE TRIGGER caviar_trials_count_update AFTER UPDATE OF study_id, state ON caviar_trials "
    f"WHEN OLD.study_id IS NOT NEW.study_id OR OLD.state IS NOT NEW.state BEGIN {REMOVE}; {ADD}; END",
    f"CREATE TRIGGER caviar_trials_count_delete AFTER DELETE ON caviar_trials BEGIN {REMOVE}; END",
]
POSTGRESQL = [
    # a state change touches the two states' rows in one order (by study, then state), whichever way
    # it goes: two transactions moving trials of a study in opposite directions (the dispatcher's
    # zombie check, running -> failed, and a driver's recovered trial, failed -> running) wait for
    # each other instead of deadlocking
    f"""CREATE FUNCTION caviar_trial_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN {ADD};
        ELSIF TG_OP = 'DELETE' THEN {REMOVE};
        ELSIF (OLD.study_id, OLD.state) < (NEW.study_id, NEW.state) THEN {REMOVE}; {ADD};
        ELSE {ADD}; {REMOVE};
        END IF;
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER caviar_trials_count_insert_delete AFTER INSERT OR DELETE ON caviar_trials "
    "FOR EACH ROW EXECUTE FUNCTION caviar_trial_counts_apply()",
    "CREATE TRIGGER caviar_trials_count_update AFTER UPDATE OF study_id, state ON caviar_trials FOR EACH ROW "
    "WHEN (OLD.study_id IS DISTINCT FROM NEW.study_id OR OLD.state IS DISTINCT FROM NEW.state) "
    "EXECUTE FUNCTION caviar_trial_counts_apply()",
]


def upgrade() -> None:
    op.create_table(
        "caviar_trial_counts",
        sa.Column("study_id", sa.String(32), sa.ForeignKey("caviar_studies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("state", sa.String(16), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:  # no trial write between the backfill and the triggers (held until the migration commits)
        op.execute("LOCK TABLE caviar_trials IN SHARE ROW EXCLUSIVE MODE")
    op.execute("INSERT INTO caviar_trial_counts (study_id, state, n) "
               "SELECT study_id, state, COUNT(*) FROM caviar_trials GROUP BY study_id, state")
    for statement in POSTGRESQL if postgresql else SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER caviar_trials_count_update ON caviar_trials")
        op.execute("DROP TRIGGER caviar_trials_count_insert_delete ON caviar_trials")
        op.execute("DROP FUNCTION caviar_trial_counts_apply()")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER caviar_trials_count_{name}")
    op.drop_table("caviar_trial_counts")
