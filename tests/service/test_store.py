"""The store against a real database: SQLite always, PostgreSQL when CAVIAR_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from sqlalchemy import event, inspect
from sqlalchemy.exc import OperationalError

from service.definition import StudyStatus
from service.local import wait_until
from service.runner.optuna_storage import optuna_journal, optuna_storage
from service.store import Store, migrate, sqlalchemy_url
from service.store.engine import RETRY_FOR_S, json_loads


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path / 'caviar.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    migrate(url)
    migrate(url)  # idempotent
    return Store(url)


def test_studies_page_and_filter(store: Store) -> None:
    _before, total_before = store.studies.page(None, 0, 1000)
    ids = [store.studies.create(f"s{i}", {"i": i}).id for i in range(5)]
    store.studies.update(ids[0], status="running")
    rows, total = store.studies.page(None, 0, 2)
    assert total == total_before + 5 and len(rows) == 2
    running, _n = store.studies.page("running", 0, 50)
    assert ids[0] in [r.id for r, _c, _b in running] and all(r.status == "running" for r, _c, _b in running)
    assert store.studies.get(ids[3]).definition == {"i": 3}  # type: ignore[union-attr]


def test_a_page_of_studies_is_each_ones_view_in_a_constant_number_of_queries(store: Store) -> None:
    """The listing's N+1: a page of 50 studies costs the queries a page of 2 does, and each study on it
    has the counts and best trial ``view`` gives it (max and min objectives, failed trials never best)."""
    owner = f"o{time.monotonic_ns()}"
    rng = random.Random(3)
    for i in range(60):
        mode = "max" if i % 3 else "min"
        sid = store.studies.create(f"s{i}", {"objective": {"metric": "m", "mode": mode}}, owner=owner).id
        for t in range(rng.randrange(0, 5)):
            state = rng.choice(["running", "completed", "failed", "stopped"])
            store.trials.upsert(sid, f"t{t}", config={"t": t}, state=state)
            if rng.random() < 0.8:
                store.trials.add_epoch(sid, f"t{t}", {"epoch": 1, "m": round(rng.random(), 1)}, "m", mode)

    statements: list[str] = []

    def count(*args: object) -> None:
        if str(args[2]).lstrip().upper().startswith("SELECT"):  # not SQLite's BEGIN
            statements.append(str(args[2]))

    event.listen(store.db.engine, "before_cursor_execute", count)
    try:
        small, _ = store.studies.page(None, 0, 2, owner=owner)
        n_small = len(statements)
        statements.clear()
        page, total = store.studies.page(None, 5, 50, owner=owner)
        n_page = len(statements)
    finally:
        event.remove(store.db.engine, "before_cursor_execute", count)
    assert total == 60 and len(page) == 50 and len(small) == 2
    assert n_small <= 5 and n_page <= 5, statements  # rows, total, counts, best of the max and of the min studies
    for row, counts, best in page:
        view = store.studies.view(row.id)
        assert view is not None
        assert counts == view[1], row.name
        assert (best.trial_id if best else None) == (view[2].trial_id if view[2] else None), row.name


def test_json_columns_read_back_exactly_what_was_written(store: Store) -> None:
    """The store decodes JSON with orjson (service.store.engine.json_loads) and falls back to json where
    orjson would differ: every value reads back equal and of the same type."""
    awkward = {"big": 2**70, "neg": -(2**64) - 1, "u64": 2**64 - 1, "f": 0.1 + 0.2, "tiny": 5e-324, "e": 1.2345678901234567e-05,
               "s": "héllo \u2603 \"q\" 12345678901234567890", "nested": [{"a": [1, 2.0, None, True]}], "empty": {}}
    sid = store.studies.create("json", awkward).id
    store.trials.upsert(sid, "t0", config=awkward, state="running")
    back = store.studies.get(sid)
    assert back is not None and back.definition == awkward
    assert [type(v) for v in back.definition.values()] == [type(v) for v in awkward.values()]
    assert store.trials.for_study(sid)[0].config == awkward


def test_json_loads_falls_back_where_orjson_refuses_or_differs() -> None:
    assert json_loads('{"x": NaN, "y": Infinity}')["y"] == float("inf")  # json accepts them, orjson does not
    assert json_loads(b'{"n": 36893488147419103232}') == {"n": 2**65}  # orjson would make it a float
    assert json_loads('{"n": 18446744073709551615, "m": [1.5]}') == {"n": 2**64 - 1, "m": [1.5]}


def test_epochs_fold_into_last_and_best_and_are_idempotent(store: Store) -> None:
    sid = store.studies.create("x", {}).id
    store.trials.upsert(sid, "t1", config={"lr": 0.1}, state="running")
    for epoch, acc in [(1, 0.5), (2, 0.8), (3, 0.7), (3, 0.7)]:
        store.trials.add_epoch(sid, "t1", {"epoch": epoch, "val_accuracy": acc, "train_loss": float("nan")}, "val_accuracy", "max")
    row, history = store.trials.get(sid, "t1")  # type: ignore[misc]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["train_loss"] is None  # NaN stored as null
    assert row.best_value == 0.8 and row.epochs == 3 and row.last_metrics["val_accuracy"] == 0.7
    store.trials.upsert(sid, "t2", config={"lr": 0.2}, state="running")
    store.trials.add_epoch(sid, "t2", {"epoch": 1, "val_accuracy": 0.9}, "val_accuracy", "max")
    store.trials.upsert(sid, "t3", config={}, state="failed")
    store.trials.add_epoch(sid, "t3", {"epoch": 1, "val_accuracy": 0.99}, "val_accuracy", "max")
    assert [t.trial_id for t in store.trials.best(sid, "max", 5)] == ["t2", "t1"]  # failed trials never rank
    assert store.trials.counts(sid)["running"] == 2 and store.trials.counts(sid)["failed"] == 1


def test_a_cancelled_study_stays_cancelled(store: Store) -> None:
    sid = store.studies.create("x", {}).id
    assert store.studies.finish(sid, StudyStatus.CANCELLED)
    assert not store.studies.finish(sid, StudyStatus.COMPLETED)
    assert store.studies.get(sid).status == "cancelled"  # type: ignore[union-attr]


def test_optuna_tables_live_beside_ours(store: Store) -> None:
    storage = optuna.storages.RDBStorage(sqlalchemy_url(store.url))
    study = optuna.create_study(storage=storage, study_name="beside")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    tables = set(inspect(store.db.engine).get_table_names())
    assert {"caviar_studies", "caviar_trials", "caviar_metrics", "caviar_alembic_version"} <= tables
    assert {"studies", "trials", "alembic_version"} <= tables
    migrate(store.url)  # our migrations still run with Optuna's alembic_version present
    assert len(optuna.load_study(study_name="beside", storage=storage).trials) == 2


@pytest.mark.parametrize("kind", ["journal", "database"])
def test_optuna_storage_keeps_a_study_where_it_says(store: Store, tmp_path: Path, kind: str) -> None:
    storage = optuna_storage(kind, store.url, tmp_path / "data", "s1")
    study = optuna.create_study(storage=storage, study_name="caviar-s1", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert optuna_journal(tmp_path / "data", "s1").exists() == (kind == "journal")
    again = optuna_storage(kind, store.url, tmp_path / "data", "s1")  # a resumed driver opens it again
    assert [t.params for t in optuna.load_study(study_name="caviar-s1", storage=again).trials] == [t.params for t in study.trials]


HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")  # the write lock, held until stdin closes
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_write_against_a_lock_never_released_gives_up_after_the_stated_time(tmp_path: Path) -> None:
    """What the README states: a store call waits for SQLite's busy timeout (30 s by default; 2 s
    here), and gives up (the API's 503) after about that; the retry window (counted from the first
    attempt) adds at most one more try."""
    url = f"sqlite:///{tmp_path / 'caviar.db'}"
    migrate(url)
    busy = 2.0
    store = Store(url, busy_timeout_s=busy)
    sid = store.studies.create("x", {}).id
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "caviar.db")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(OperationalError, match="locked"):
            store.studies.update(sid, status="running")
        waited = time.monotonic() - t0
    finally:
        holder.communicate("")
    print(f"gave up after {waited:.1f} s")
    # at least the busy timeout; at most one more attempt within the retry window, with a margin for a slow machine
    assert busy <= waited + 0.1
    assert waited < busy + max(RETRY_FOR_S, busy) + 5
    assert store.studies.update(sid, status="running")  # and the store works once the lock is gone


def test_the_zombie_check_reads_live_trials_through_their_own_index(store: Store) -> None:
    """``with_zombies`` (the dispatcher's every tick): finished studies with pending/running trials,
    found from the live trials (index ix_caviar_trials_state_study, migration 0010) and not by
    reading every trial of the store."""
    import sqlalchemy as sa

    finished = store.studies.create("finished", {}).id
    store.trials.upsert(finished, "done", config={}, state="completed")
    store.trials.upsert(finished, "left", config={}, state="running")
    store.studies.finish(finished, StudyStatus.CANCELLED)
    clean = store.studies.create("clean", {}).id
    store.trials.upsert(clean, "done", config={}, state="completed")
    store.studies.finish(clean, StudyStatus.COMPLETED)
    running = store.studies.create("running", {}).id
    store.studies.update(running, status="running")
    store.trials.upsert(running, "t", config={}, state="pending")
    zombies = {r.id for r in store.studies.with_zombies()}  # (PostgreSQL's database is shared with other tests)
    assert finished in zombies and clean not in zombies and running not in zombies
    store.trials.mark_zombies(finished, "gone")
    assert finished not in {r.id for r in store.studies.with_zombies()}
    indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(store.db.engine).get_indexes("caviar_trials")}
    assert indexes["ix_caviar_trials_state_study"] == ["state", "study_id"]
    if store.url.startswith("sqlite"):  # and SQLite's planner takes it for the live trials
        with store.db.engine.connect() as c:
            plan = " ".join(str(r[-1]) for r in c.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT DISTINCT study_id FROM caviar_trials WHERE state IN ('pending', 'running')"))
        assert "ix_caviar_trials_state_study" in plan, plan


def test_a_page_passes_each_definition_through_as_its_stored_json(store: Store) -> None:
    """The listing reads each definition as the JSON text the database holds (not decoded) and the
    three fields a summary shows extracted by the database, on SQLite and PostgreSQL alike."""
    owner = f"o{time.monotonic_ns()}"
    definitions = [{"name": f"s{i}", "trainable": "mlp_bn_softmax", "objective": {"metric": "val_accuracy", "mode": "min" if i % 2 else "max"},
                    "budget": {"num_trials": 7 + i, "max_concurrent_trials": 2}, "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True}},
                    "fixed": {"big": 2**70, "text": "ünïcode \"quoted\""}} for i in range(3)]
    ids = [store.studies.create(d["name"], d, owner=owner).id for d in definitions]
    page, total = store.studies.page(None, 0, 50, owner=owner)
    assert total == 3 and [row.id for row, _c, _b in page] == ids[::-1]
    for (row, _counts, _best), d in zip(page, definitions[::-1], strict=True):
        assert isinstance(row.definition_json, str) and json_loads(row.definition_json) == d  # 2**70 too: not through a float
        assert (row.trainable, row.objective, row.num_trials) == (d["trainable"], d["objective"], d["budget"]["num_trials"])
    assert [r.id for r, _c, _b in store.studies.page("", 0, 50, owner=owner)[0]] == ids[::-1]  # an empty status filters nothing
    assert store.studies.page("running", 0, 50, owner=owner) == ([], 0)


def counted(store: Store, study_ids: list[str]) -> dict[str, dict[str, int]]:
    """Each study's trials by state, counted over the trials themselves: what the kept counts must be."""
    from sqlalchemy import func, select

    from service.store.models import TrialRow, TrialState

    out = {sid: {state.value: 0 for state in TrialState} for sid in study_ids}
    with store.db.session() as s:
        q = select(TrialRow.study_id, TrialRow.state, func.count()).where(TrialRow.study_id.in_(study_ids)).group_by(TrialRow.study_id, TrialRow.state)
        for sid, state, n in s.execute(q):
            out[sid][state] = n
    return out


def test_the_kept_trial_counts_are_the_trials_after_every_kind_of_write(store: Store) -> None:
    """Migration 0011's triggers keep each study's counts by state: after trials are created, change
    state one by one or many at once, are written by epoch and deleted, the counts read back (as a
    listing and a study's view read them) are those counted over the trials, on SQLite and PostgreSQL."""
    from service.store.trials import counts_many

    rng = random.Random(11)
    owner = f"o{time.monotonic_ns()}"
    ids = [store.studies.create(f"c{i}", {"objective": {"metric": "m", "mode": "max"}}, owner=owner).id for i in range(3)]
    states = ["pending", "running", "completed", "stopped_early", "failed"]
    for step in range(120):
        sid, tid = rng.choice(ids), f"t{rng.randrange(12)}"
        kind = rng.random()
        if kind < 0.5:
            store.trials.upsert(sid, tid, config={"t": tid}, state=rng.choice(states))
        elif kind < 0.7:
            store.trials.add_epochs(sid, [(tid, {"epoch": rng.randrange(1, 4), "m": rng.random()}), (f"t{rng.randrange(12)}", {"epoch": 1, "m": 0.5})], "m", "max")
        elif kind < 0.8:
            store.trials.upsert(sid, tid, retries=1)  # a write that leaves the state alone
        elif kind < 0.9:
            store.trials.mark_zombies(sid, "gone")  # many trials' state in one statement
        else:
            store.trials.forget_except(sid, {f"t{k}" for k in range(12) if rng.random() < 0.6})  # deletes
        expected = counted(store, ids)
        with store.db.session() as s:
            assert counts_many(s, ids) == expected, f"step {step}"
        assert store.trials.counts(ids[0]) == store.studies.view(ids[0])[1] == expected[ids[0]], f"step {step}"  # type: ignore[index]
    assert sum(sum(store.trials.counts(i).values()) for i in ids) > 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migration_0011_counts_the_trials_already_stored_and_goes_back(tmp_path: Path, backend: str) -> None:
    """A store at migration 0010 with trials in it: after the upgrade its kept counts are its trials'
    and the triggers keep them; a downgrade to 0010 and an upgrade again do the same."""
    from contextlib import ExitStack

    from alembic import command
    from alembic.config import Config

    from tests.conftest import fresh_postgres_database

    with ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else stack.enter_context(fresh_postgres_database())
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(migrate.__code__.co_filename).with_name("migrations")))
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        command.upgrade(cfg, "0010")
        old = Store(url)
        sid = old.studies.create("before", {"objective": {"metric": "m", "mode": "max"}}).id
        for k, state in enumerate(["pending", "running", "running", "completed", "failed", "completed"]):
            old.trials.upsert(sid, f"t{k}", config={}, state=state)
        old.db.engine.dispose()
        want = {"pending": 1, "running": 2, "completed": 2, "stopped_early": 0, "failed": 1}
        for _ in range(2):  # the upgrade, then a downgrade to 0010 and the upgrade again
            migrate(url)
            new = Store(url)
            assert counted(new, [sid])[sid] == new.trials.counts(sid) == want
            new.trials.upsert(sid, "t0", state="running")  # and the triggers run from then on
            new.trials.upsert(sid, "t0", state="pending")
            assert new.trials.counts(sid) == want
            new.db.engine.dispose()
            command.downgrade(cfg, "0010")


def test_an_epoch_reported_again_is_ignored_whole(store: Store) -> None:
    """Tune runs an epoch again when a worker is lost before it registered that epoch's checkpoint:
    the store keeps the first report, and the trial's last and best values stay ones its history shows."""
    sid = store.studies.create("again", {"objective": {"metric": "m", "mode": "max"}}).id
    store.trials.add_epochs(sid, [("t", {"epoch": 1, "m": 0.3}), ("t", {"epoch": 2, "m": 0.5})], "m", "max")
    store.trials.add_epochs(sid, [("t", {"epoch": 2, "m": 0.9}), ("t", {"epoch": 3, "m": 0.6})], "m", "max")  # 2 again, then 3
    found = store.trials.get(sid, "t")
    assert found is not None
    row, history = found
    assert [(h["epoch"], h["m"]) for h in history] == [(1, 0.3), (2, 0.5), (3, 0.6)]
    assert row.best_value == 0.6 and row.last_metrics == {"epoch": 3, "m": 0.6} and row.epochs == 3


def test_a_lease_has_one_holder_until_it_is_released_or_lapses(store: Store) -> None:
    """What runs the dispatcher in one API process of several (service.api.dispatch)."""
    assert store.leases.holder("d") is None
    assert store.leases.hold("d", "a", 30)
    assert not store.leases.hold("d", "b", 30)  # held by a
    assert store.leases.hold("d", "a", 30)  # a renews
    held = store.leases.holder("d")
    assert held is not None and held[0] == "a" and 29 < held[1] <= 30
    assert not store.leases.release("d", "b")  # only its holder gives it up
    assert store.leases.release("d", "a")
    assert store.leases.hold("d", "b", 0.3)  # free: b takes it at once
    assert not store.leases.hold("d", "a", 30)
    assert store.leases.hold("other", "a", 30)  # leases are independent
    # b stops renewing: its lease lapses by the database's clock, and a takes it
    wait_until(lambda: store.leases.hold("d", "a", 30), 5, "b's lease to lapse", interval=0.05)
    assert store.leases.holder("d")[0] == "a"  # type: ignore[index]
    assert not store.leases.hold("d", "b", 30)


def test_processes_racing_for_a_free_lease_get_one_holder(store: Store) -> None:
    """Eight holders, each with its own engine (its own connections, as separate processes have),
    race for a lease in many rounds: each round exactly one wins."""
    stores = [Store(store.url) for _ in range(8)]
    try:
        for round_ in range(15):
            barrier = threading.Barrier(len(stores))

            def race(i: int, s: Store, barrier: threading.Barrier = barrier, name: str = f"r{round_}") -> bool:
                barrier.wait()
                return s.leases.hold(name, f"h{i}", 30)

            with ThreadPoolExecutor(len(stores)) as pool:
                won = list(pool.map(race, range(len(stores)), stores))
            assert sum(won) == 1, (round_, won)
            assert store.leases.holder(f"r{round_}")[0] == f"h{won.index(True)}"  # type: ignore[index]
    finally:
        for s in stores:
            s.db.dispose()


def test_a_study_update_can_require_its_recorded_job(store: Store) -> None:
    """The dispatcher's compare-and-set: a job is recorded only on a study without one, and a dead
    job's study is resumed only while that job is still its job (two dispatchers never both act)."""
    sid = store.studies.create("s", {}).id
    assert store.studies.update(sid, only_job=None, ray_job_id="job-1")
    assert not store.studies.update(sid, only_job=None, ray_job_id="job-2")  # it has one
    assert not store.studies.update(sid, only_job="job-0", ray_job_id=None)  # not its job
    assert store.studies.update(sid, only_job="job-1", ray_job_id=None, resumes=1)
    row = store.studies.get(sid)
    assert row is not None and row.ray_job_id is None and row.resumes == 1
    assert store.studies.update(sid, only_job=None, ray_job_id="job-3")  # resubmitted


@pytest.mark.postgres
def test_replicas_starting_together_migrate_a_fresh_postgres_one_after_the_other() -> None:
    """Two API replicas (docker/k8s/api.yaml) start at once against an empty database: each migrates,
    under an advisory lock, and both come up (without it one fails on a table the other created)."""
    from tests.conftest import fresh_postgres_database

    with fresh_postgres_database() as url:
        code = "import sys; from service.store import migrate; migrate(sys.argv[1])"
        procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True) for _ in range(3)]
        results = [(p.wait(120), p.stderr.read() if p.stderr else "") for p in procs]
        assert [rc for rc, _ in results] == [0, 0, 0], [err[-2000:] for _, err in results]
        store = Store(url)
        assert {"caviar_studies", "caviar_leases", "caviar_trial_counts"} <= set(inspect(store.db.engine).get_table_names())
        store.db.dispose()
