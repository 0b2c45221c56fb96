"""One settings object, read from the environment (flags of `caviar serve` set the same variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from service.store import OPTUNA_STORAGES
from trainables.datasets import data_dir as default_data_dir


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    ray_address: str  # the Ray Jobs / dashboard HTTP address, as `ray job submit` takes it
    dashboard_url: str  # what users open in a browser (may differ from ray_address behind a proxy)
    max_grid_points: int = 10_000
    # bearer tokens: "required" when the API binds beyond loopback (`caviar serve` decides), else
    # "optional" (a token given is checked and names the owner; none means the owner "local")
    auth: str = "optional"
    quota_active_studies: int = 8  # per owner: studies queued or running at once
    quota_concurrent_trials: int = 64  # per owner: summed max_concurrent_trials of those studies
    max_resumes: int = 3  # times a study whose Ray job died is resumed from Tune's saved state
    drain_s: float = 2.0  # on SIGTERM: seconds /readyz reports draining before the server stops
    # where a study's Optuna sampler keeps its trials: "journal" (a file under data_dir/optuna on
    # the driver's node) or "database" (Optuna's tables in database_url); see store.optuna_storage
    optuna_storage: str = "journal"
    # seconds GET /v1/studies/{id} and /trials are served from memory (service.readcache); 0: off
    read_cache_s: float = 0.5

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = default_data_dir().resolve()
        url = os.environ.get("CAVIAR_DATABASE_URL") or f"sqlite:///{data_dir / 'caviar.db'}"
        ray = os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
        if "://" not in ray:
            ray = f"http://{ray}"
        return cls(
            data_dir=data_dir,
            database_url=url,
            ray_address=ray,
            dashboard_url=os.environ.get("CAVIAR_DASHBOARD_URL") or ray,
            max_grid_points=int(os.environ.get("CAVIAR_MAX_GRID_POINTS", "10000")),
            auth=os.environ.get("CAVIAR_AUTH", "optional"),
            quota_active_studies=int(os.environ.get("CAVIAR_QUOTA_ACTIVE_STUDIES", "8")),
            quota_concurrent_trials=int(os.environ.get("CAVIAR_QUOTA_CONCURRENT_TRIALS", "64")),
            max_resumes=int(os.environ.get("CAVIAR_MAX_RESUMES", "3")),
            drain_s=float(os.environ.get("CAVIAR_DRAIN_S", "2")),
            read_cache_s=float(os.environ.get("CAVIAR_READ_CACHE_S", "0.5")),
            optuna_storage=_choice("CAVIAR_OPTUNA_STORAGE", "journal", OPTUNA_STORAGES),
        )


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise SystemExit(f"caviar: {name} must be one of {', '.join(choices)}, not {value!r}")
    return value
