"""One settings object per process, built once and passed down.

``Settings`` reads ``CAVIAR_*`` variables (and Ray's ``RAY_ADDRESS`` / ``RAY_AUTH_TOKEN``); keyword
arguments win over the environment, which is how the CLI turns its flags into settings. Nothing
in Caviar writes ``os.environ`` (but a ``--workers`` API worker, which points prometheus_client at the
workers' shared metrics directory in its own environment: service.api.server). ``load_settings`` turns a bad value into one line that names the
variable and the rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

OptunaStorage = Literal["journal", "database"]
OPTUNA_STORAGES: tuple[str, ...] = ("journal", "database")
DEFAULT_RAY_ADDRESS = "http://127.0.0.1:8265"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAVIAR_", frozen=True, extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".caviar",
                           description="SQLite file, Ray results, Optuna journals, user datasets, caches.")
    database_url: str = Field("", description="The store; default: sqlite:///<data_dir>/caviar.db.")
    ray_address: str = Field(DEFAULT_RAY_ADDRESS, validation_alias=AliasChoices("ray_address", "RAY_ADDRESS", "CAVIAR_RAY_ADDRESS"),
                             description="The Ray Jobs / dashboard HTTP address, as `ray job submit` takes it.")
    ray_auth_token: SecretStr | None = Field(None, validation_alias=AliasChoices("ray_auth_token", "RAY_AUTH_TOKEN"),
                                             description="The Ray cluster's token (default: the file ~/.ray/auth_token, if any).")
    dashboard_url: str = Field("", description="What users open in a browser (default: the Ray address).")
    max_grid_points: int = Field(10_000, ge=1, le=10_000_000)
    max_dataset_file_bytes: int = Field(1 << 30, ge=1, description="Largest file dataset a study may name (every trial reads it whole).")
    # bearer tokens: "required" when the API binds beyond loopback (`caviar serve` decides), else
    # "optional" (a token given is checked and names the owner; none means the owner "local")
    auth: Literal["optional", "required"] = "optional"
    quota_active_studies: int = Field(8, ge=0, description="Per owner: studies queued or running at once.")
    quota_concurrent_trials: int = Field(64, ge=0, description="Per owner: summed max_concurrent_trials of those studies.")
    max_resumes: int = Field(3, ge=0, description="Times a study whose Ray job died is resumed from Tune's saved state.")
    drain_s: float = Field(2.0, ge=0, description="On SIGTERM: seconds /readyz reports draining before the server stops.")
    optuna_storage: OptunaStorage = Field("journal", description="Where a study's sampler keeps its trials (see service.runner.optuna_storage).")
    read_cache_s: float = Field(0.5, ge=0, description="Seconds GET /v1/studies/{id} and /trials are served from memory; 0: off.")
    storage: str = Field("", description="Where Tune keeps experiment state and checkpoints: a path every Ray node mounts "
                         "(NFS, the compose volume) or s3://bucket/prefix (default: <data_dir>/ray_results). See service.storage.")
    storage_endpoint_url: str = Field("", description="An S3-compatible store's endpoint for an s3:// storage, e.g. http://minio:9000.")
    storage_region: str = Field("", description="The object store's region (default: the AWS SDK's own default).")
    node_resources: dict[Literal["CPU", "GPU"], float] = Field(
        default_factory=dict, description="The largest node an autoscaling cluster can add, e.g. {\"CPU\": 16, \"GPU\": 1}: a study that fits "
        "it is accepted though no such node runs now (KubeRay's worker groups scale from 0). Default: only the nodes alive now count.")
    driver_nice: int = Field(0, ge=0, le=19, description="CPU niceness of each study's driver process: > 0, drivers yield the CPU to "
                             "Ray's GCS and Jobs API on the head node (and, on one machine, to Caviar's API and database); "
                             "docs/scaling.md measures the trade (API latency for ingest rate).")
    report_ahead: bool = Field(True, description="Trials of the built-in trainables train their next epoch while the driver handles "
                               "their last report, instead of waiting for it; a trial its scheduler stops ends within a batch "
                               "(trainables.report.TuneReporter). false: every report waits for the driver, as in plain Ray Tune.")
    dispatch_interval_s: float = Field(1.0, gt=0, le=60, description="The dispatcher's tick (it is also woken by each submission).")
    dispatch_lease_s: float = Field(0.0, ge=0, le=3600, description="Of several API processes sharing the database, the one that runs "
                                    "the dispatcher renews a lease every tick; when it stops renewing (killed, stalled), another takes "
                                    "over this many seconds later (service.api.dispatch). Default (0): 15 s, or 3 ticks if longer.")
    warm_driver: bool = Field(True, description="Keep one study driver started ahead (a Ray job with Ray, Tune, Optuna and PyTorch "
                              "imported, connected to the cluster): the next study runs in it, one Ray job per study as before, and its "
                              "first trial starts about 2 s sooner (service.jobs; sooner still with warm_trials).")
    warm_trials: bool = Field(True, description="The warm driver also starts its trial processes ahead, one per CPU of each node (at "
                              "most 16), each with PyTorch and the trainables imported: the study's first trials skip a process start "
                              "and those imports (service.runner.warm). Each idle one holds about 300 MB while the driver waits.")

    @field_validator("storage")
    @classmethod
    def _storage_scheme(cls, v: str) -> str:
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme not in ("", "file", "s3"):
            raise ValueError("must be a path or s3://bucket/prefix")
        if scheme == "s3" and not v[len("s3://"):].strip("/"):
            raise ValueError("s3:// needs a bucket: s3://bucket/prefix")
        return v

    @field_validator("dispatch_lease_s")
    @classmethod
    def _lease_outlasts_ticks(cls, v: float, info: ValidationInfo) -> float:
        interval = info.data.get("dispatch_interval_s")
        if v and interval is not None and v < 3 * interval:
            raise ValueError(f"must be at least 3 dispatcher ticks (3 x CAVIAR_DISPATCH_INTERVAL_S = {3 * interval:g} s), "
                             "or the lease lapses between renewals")
        return v

    @field_validator("storage_endpoint_url")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v and not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        data_dir = self.data_dir.expanduser().resolve()
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'caviar.db'}")
        if "://" not in self.ray_address:
            object.__setattr__(self, "ray_address", f"http://{self.ray_address}")
        object.__setattr__(self, "ray_address", self.ray_address.rstrip("/"))
        if not self.dashboard_url:
            object.__setattr__(self, "dashboard_url", self.ray_address)
        if not self.dispatch_lease_s:
            object.__setattr__(self, "dispatch_lease_s", max(15.0, 3 * self.dispatch_interval_s))
        if self.storage and "://" not in self.storage:
            object.__setattr__(self, "storage", str(Path(self.storage).expanduser().resolve()))
        if self.ray_auth_token is None:
            path = Path.home() / ".ray" / "auth_token"
            if path.is_file():
                object.__setattr__(self, "ray_auth_token", SecretStr(path.read_text().strip()))
        return self


def _variable(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return next((str(c) for c in alias.choices if str(c).isupper()), f"CAVIAR_{field.upper()}")
    return f"CAVIAR_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and ``overrides`` (None values are ignored); a bad value ends
    the process with one line: ``caviar: CAVIAR_QUOTA_ACTIVE_STUDIES: Input should be a valid integer ...``."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        given = f" (got {err['input']!r})" if isinstance(err.get("input"), (str, int, float)) else ""
        raise SystemExit(f"caviar: {_variable(field)}: {err['msg']}{given}") from None
