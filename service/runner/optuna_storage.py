"""Where a study's Optuna sampler keeps its trials (the Optuna study ``caviar-<study id>``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.settings import OptunaStorage
from service.store import sqlalchemy_url


def optuna_journal(data_dir: Path, study_id: str) -> Path:
    """Where a study's Optuna journal lives (``optuna-dashboard <this file>`` opens it)."""
    return data_dir / "optuna" / f"{study_id}.journal"


def optuna_storage(kind: OptunaStorage, database_url: str, data_dir: Path, study_id: str) -> Any:
    """The Optuna storage of a study's sampler.

    ``journal`` (the default): Optuna's JournalStorage, an append-only file in the data directory
    of the node that runs the study's driver. ``database``: Optuna's RDBStorage in Caviar's own
    database. The journal costs a file append per write where the database costs a transaction per
    suggested parameter (docs/benchmarks.md §5 has the figures).
    """
    import optuna

    if kind == "database":
        return optuna.storages.RDBStorage(
            sqlalchemy_url(database_url),
            engine_kwargs={"connect_args": {"timeout": 30}} if database_url.startswith("sqlite") else {},
        )
    from optuna.storages.journal import JournalFileBackend

    path = optuna_journal(data_dir, study_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
