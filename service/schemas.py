"""The study definition and the API's response models.

A definition is validated in two steps: its shape by pydantic (each field's own rules), then
``check_definition`` against the registries (trainable, search space, knobs, grid size, cluster
resources). Both raise errors with a dotted field path, which the app turns into 422 problem
details.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from search_spaces import CategoricalParam, FloatParam, IntParam, SearchSpace, SearchSpaceError, resolve_space
from service.states import StudyStatus, TrialState
from trainables import UnknownTrainable, get_trainable
from trainables.datasets import DatasetError, DatasetSpec, FileSpec, resolve_file

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class DefinitionError(ValueError):
    """A definition breaks a rule: ``field`` is the dotted path, ``rule`` what it must satisfy."""

    def __init__(self, field: str, rule: str) -> None:
        self.field, self.rule = field, rule
        super().__init__(f"{field}: {rule}")


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Literal["val_accuracy", "val_loss", "train_loss", "val_confidence"] = "val_accuracy"
    mode: Literal["max", "min"] = "max"


class Sampler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["tpe", "random", "grid", "cmaes", "qmc", "gp"] = "tpe"
    seed: int | None = Field(0, ge=0, le=2**32 - 1)


class Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["asha", "hyperband", "median", "none"] = "asha"
    max_t: int | None = Field(None, ge=1, le=1000, description="Epochs; defaults to fixed.epochs.")
    grace_period: int = Field(2, ge=1, le=1000)
    reduction_factor: float = Field(3.0, gt=1.0, le=100.0)

    @model_validator(mode="after")
    def _grace(self) -> Scheduler:
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError("grace_period must be <= max_t")
        return self


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_trials: int = Field(16, ge=1, le=10_000)
    max_concurrent_trials: int = Field(2, ge=1, le=1024)
    time_budget_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    max_failures: int = Field(2, ge=0, le=10, description="Retries of a failed trial, from its last checkpoint.")


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0, le=256)
    gpu: float = Field(0.0, ge=0, le=16, description="May be fractional: 0.25 packs four trials on one GPU.")


class StudyDefinition(BaseModel):
    """What a user submits. Trainables, datasets and presets are names; nothing here is code."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "digits-quick",
                    "trainable": "mlp_bn_softmax",
                    "dataset": {"name": "digits", "validation_fraction": 0.2, "seed": 0},
                    "search_space": "seven_key",
                    "fixed": {"epochs": 8},
                    "objective": {"metric": "val_accuracy", "mode": "max"},
                    "sampler": {"type": "tpe", "seed": 0},
                    "scheduler": {"type": "asha", "max_t": 8, "grace_period": 1, "reduction_factor": 3},
                    "budget": {"num_trials": 12, "max_concurrent_trials": 2},
                    "resources_per_trial": {"cpu": 1, "gpu": 0},
                }
            ]
        },
    )

    name: str = Field(pattern=NAME, description="A label for people; ids identify studies.")
    trainable: str = Field(min_length=1, max_length=128, description="A registered trainable (GET /v1/trainables).")
    dataset: DatasetSpec
    search_space: str | list[str | dict[str, Any]] | dict[str, Any] = Field(
        description="A preset name (GET /v1/search-spaces), an inline mapping of parameters, or a list of both merged left to right."
    )
    fixed: dict[str, Any] = Field(default_factory=dict, description="Knob values every trial gets (e.g. epochs).")
    objective: Objective = Field(default_factory=Objective)
    sampler: Sampler = Field(default_factory=Sampler)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    budget: Budget = Field(default_factory=Budget)
    resources_per_trial: Resources = Field(default_factory=Resources)

    def epochs(self) -> int:
        return int(self.fixed.get("epochs") or self.scheduler.max_t or 20)

    def space(self) -> SearchSpace:
        return resolve_space(self.search_space)


def _space_error(exc: SearchSpaceError) -> DefinitionError:
    return DefinitionError(f"search_space.{exc.parameter}" if exc.parameter else "search_space", exc.rule)


def check_definition(d: StudyDefinition, *, max_grid_points: int, cluster: dict[str, float] | None, data_dir: Path) -> SearchSpace:
    """Check a shape-valid definition against the registries; returns its resolved search space.

    ``cluster`` is the Ray cluster's total resources (None when Ray is unreachable: resource
    checks are then left to Ray).
    """
    try:
        spec = get_trainable(d.trainable)
    except UnknownTrainable as exc:
        raise DefinitionError("trainable", str(exc)) from None
    try:
        space = d.space()
    except SearchSpaceError as exc:
        raise _space_error(exc) from None
    knobs = spec.config_model.model_fields
    for name, param in space.items():
        if name not in knobs:
            raise DefinitionError(f"search_space.{name}", f"'{d.trainable}' has no knob '{name}'")
        # every value the parameter can take must be a valid value of the knob (e.g. width <= 8192)
        ends: list[Any] = param.choices if isinstance(param, CategoricalParam) else [param.low, param.high] if isinstance(param, (FloatParam, IntParam)) else []
        for value in ends:
            try:
                spec.config_model.model_validate({**d.fixed, name: value, "dataset": d.dataset.model_dump()})
            except ValidationError as exc:
                err = next((e for e in exc.errors(include_url=False) if e["loc"][:1] == (name,)), None)
                if err is not None:
                    raise DefinitionError(f"search_space.{name}", f"{value!r} is not a valid '{name}': {err['msg']}") from None
    for name in d.fixed:
        if name == "dataset":
            raise DefinitionError("fixed.dataset", "set the dataset with the top-level `dataset` key")
        if name not in knobs:
            raise DefinitionError(f"fixed.{name}", f"'{d.trainable}' has no knob '{name}'")
        if name in space:
            raise DefinitionError(f"fixed.{name}", "is also in the search space; declare it once")
    try:  # the fixed values themselves, with the trainable's own rules
        spec.config_model.model_validate({**d.fixed, "dataset": d.dataset.model_dump()})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise DefinitionError("fixed." + ".".join(str(p) for p in err["loc"]), err["msg"]) from None
    if isinstance(d.dataset, FileSpec):
        try:
            path = resolve_file(d.dataset.path, root=data_dir)
        except DatasetError as exc:
            raise DefinitionError("dataset.path", str(exc).removeprefix("dataset.path: ")) from None
        if not path.is_file():
            raise DefinitionError("dataset.path", f"no file '{d.dataset.path}' under {data_dir / 'datasets'}")
    if d.scheduler.max_t is not None and "epochs" in d.fixed and d.scheduler.max_t > d.fixed["epochs"]:
        raise DefinitionError("scheduler.max_t", f"must be <= fixed.epochs ({d.fixed['epochs']})")
    if d.scheduler.type in ("asha", "hyperband") and d.scheduler.grace_period > d.epochs():
        raise DefinitionError("scheduler.grace_period", f"must be <= the epochs a trial runs ({d.epochs()})")
    if d.sampler.type == "grid":
        try:
            space.grid(max_grid_points)
        except SearchSpaceError as exc:
            raise _space_error(exc) from None
    if cluster is not None:
        for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
            want = getattr(d.resources_per_trial, key)
            have = cluster.get(ray_key, 0.0)
            if want > have:
                raise DefinitionError(
                    f"resources_per_trial.{key}", f"asks for {want:g} {ray_key} per trial; the Ray cluster has {have:g}"
                )
    return space


# -- responses -----------------------------------------------------------------------------------


class TrialOut(BaseModel):
    trial_id: str
    state: TrialState
    config: dict[str, Any]
    epochs: int
    last_metrics: dict[str, Any] | None
    best_value: float | None = Field(description="Best objective value over the trial's epochs.")
    error: str | None
    retries: int = Field(0, description="Times the trial failed and was retried from its last checkpoint.")
    started_at: datetime | None
    finished_at: datetime | None


class TrialDetail(TrialOut):
    history: list[dict[str, Any]] = Field(
        description="One entry per epoch: the learning curve; `reported_at` is when the study's driver received it (Unix seconds)."
    )


class StudyOut(BaseModel):
    id: str
    name: str
    status: StudyStatus
    trainable: str
    objective: Objective
    trial_counts: dict[str, int]
    best: dict[str, Any] | None = Field(description="Best trial so far: trial_id, value, config.")
    ray_job_id: str | None
    dashboard_url: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    definition: dict[str, Any]
    owner: str = Field(description="Owner of the API token that submitted the study ('local': loopback without a token).")
    resumes: int = Field(0, description="Times the study was resumed from Tune's saved state after its Ray job died.")


class StudyPage(BaseModel):
    items: list[StudyOut]
    total: int
    offset: int
    limit: int


class BestEntry(BaseModel):
    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    value: float


class BestOut(BaseModel):
    study_id: str
    objective: Objective
    items: list[BestEntry]
    test_metrics: dict[str, float] | None = Field(
        description="Held-out test metrics of the best trial's final checkpoint (set when the study completes)."
    )
