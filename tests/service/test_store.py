"""The store against a real database: SQLite always, PostgreSQL when CAVIAR_TEST_POSTGRES_URL is set."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from sqlalchemy import inspect

from service.schemas import StudyStatus
from service.store import Store, migrate, optuna_journal, optuna_storage, sqlalchemy_url


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path / 'caviar.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    migrate(url)
    migrate(url)  # idempotent
    return Store(url)


def test_studies_page_and_filter(store: Store) -> None:
    _before, total_before = store.list_studies(None, 0, 1000)
    ids = [store.create_study(f"s{i}", {"i": i}).id for i in range(5)]
    store.update_study(ids[0], status="running")
    rows, total = store.list_studies(None, 0, 2)
    assert total == total_before + 5 and len(rows) == 2
    running, _n = store.list_studies("running", 0, 50)
    assert ids[0] in [r.id for r in running] and all(r.status == "running" for r in running)
    assert store.get_study(ids[3]).definition == {"i": 3}  # type: ignore[union-attr]


def test_epochs_fold_into_last_and_best_and_are_idempotent(store: Store) -> None:
    sid = store.create_study("x", {}).id
    store.upsert_trial(sid, "t1", config={"lr": 0.1}, state="running")
    for epoch, acc in [(1, 0.5), (2, 0.8), (3, 0.7), (3, 0.7)]:
        store.add_epoch(sid, "t1", {"epoch": epoch, "val_accuracy": acc, "train_loss": float("nan")}, "val_accuracy", "max")
    row, history = store.trial(sid, "t1")  # type: ignore[misc]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["train_loss"] is None  # NaN stored as null
    assert row.best_value == 0.8 and row.epochs == 3 and row.last_metrics["val_accuracy"] == 0.7
    store.upsert_trial(sid, "t2", config={"lr": 0.2}, state="running")
    store.add_epoch(sid, "t2", {"epoch": 1, "val_accuracy": 0.9}, "val_accuracy", "max")
    store.upsert_trial(sid, "t3", config={}, state="failed")
    store.add_epoch(sid, "t3", {"epoch": 1, "val_accuracy": 0.99}, "val_accuracy", "max")
    assert [t.trial_id for t in store.best_trials(sid, "max", 5)] == ["t2", "t1"]  # failed trials never rank
    assert store.trial_counts(sid)["running"] == 2 and store.trial_counts(sid)["failed"] == 1


def test_a_cancelled_study_stays_cancelled(store: Store) -> None:
    sid = store.create_study("x", {}).id
    assert store.finish_study(sid, StudyStatus.CANCELLED)
    assert not store.finish_study(sid, StudyStatus.COMPLETED)
    assert store.get_study(sid).status == "cancelled"  # type: ignore[union-attr]


def test_optuna_tables_live_beside_ours(store: Store) -> None:
    storage = optuna.storages.RDBStorage(sqlalchemy_url(store.url))
    study = optuna.create_study(storage=storage, study_name="beside")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    tables = set(inspect(store.engine).get_table_names())
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
    with pytest.raises(ValueError, match="CAVIAR_OPTUNA_STORAGE"):
        optuna_storage("memory", store.url, tmp_path, "s1")
