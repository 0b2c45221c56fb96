"""Shared fixtures: an isolated data directory per session and one local Ray cluster for `ray` tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def caviar_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test sees a fresh CAVIAR_DATA_DIR (MNIST-1D is generated into it once per session)."""
    path = tmp_path_factory.mktemp("caviar-data")
    (path / "datasets").mkdir()
    os.environ["CAVIAR_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def ray_cluster(caviar_data_dir: Path) -> Iterator[None]:
    """A local Ray (2 CPUs) started by the tests and shut down after them."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"CAVIAR_DATA_DIR": str(caviar_data_dir)}},
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
