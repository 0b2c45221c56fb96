"""What a study is: its definition, its statuses and its trials' states. Torch-free and Ray-free,
shared by the API (which validates), the store and the study's driver.

A definition is validated in two steps: its shape by pydantic (each field's own rules), then
``check_definition`` against the registries (trainable and its declared metrics, search space,
knobs, sampler, scheduler, dataset file, grid size, cluster resources). Both raise errors with a
dotted field path, which the API turns into 422 problem details. ``freeze`` gives what is stored:
the definition with its search space resolved (presets expanded), so the driver and any resume
run the space the study was submitted with, whatever happens to preset files later.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from search_spaces import (
    SAMPLERS,
    TPE_OPTIONS,
    TPE_SAMPLERS,
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchSpace,
    SearchSpaceError,
    parse_space,
    resolve_space,
)
from service.store.models import ACTIVE, FINISHED, StudyStatus, TrialState
from trainables import UnknownTrainable, get_trainable
from trainables.datasets import MAX_FILE_BYTES, DatasetError, DatasetSpec, FileSpec, check_file

__all__ = ["ACTIVE", "FINISHED", "SCHEDULERS", "DefinitionError", "StudyDefinition", "StudyStatus", "TrialState",
           "check_definition", "freeze", "trial_outcome"]

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
# trial schedulers by name (service.runner.schedulers builds each); the rung-based ones stop trials
# at rungs, so their grace_period must fit in a trial's epochs
SCHEDULERS = ("asha", "hyperband", "median", "none")
RUNG_BASED = ("asha", "hyperband")
MAX_PANDA_TRIALS = 8
MAX_OBJECTIVES = 4
# what a study with several objectives may use: the samplers Optuna runs with several objectives, and
# the schedulers that can judge several at once (asha becomes multi-objective ASHA)
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "grid", "qmc", "nsga2", "nsga3")
MULTI_OBJECTIVE_SCHEDULERS = ("asha", "none")
METRIC = r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$"


class DefinitionError(ValueError):
    """A definition breaks a rule: ``field`` is the dotted path, ``rule`` what it must satisfy."""

    def __init__(self, field: str, rule: str) -> None:
        self.field, self.rule = field, rule
        super().__init__(f"{field}: {rule}")


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str = Field("val_accuracy", pattern=METRIC, description="One of the metrics the trainable declares (GET /v1/trainables).")
    mode: Literal["max", "min"] = "max"


def _one_of(kind: str, value: str, names: Any) -> str:
    if value not in names:
        raise ValueError(f"unknown {kind} '{value}' (expected one of {', '.join(names)})")
    return value


class Sampler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field("tpe", description=f"One of: {', '.join(SAMPLERS)}.")
    seed: int | None = Field(0, ge=0, le=2**32 - 1)
    multivariate: bool | None = Field(
        None, description=f"{' and '.join(TPE_SAMPLERS)} only: model the parameters jointly (default true, as Optuna's TPE "
                          "for one objective) or each on its own.")
    group: bool | None = Field(
        None, description=f"{' and '.join(TPE_SAMPLERS)} only, with multivariate: model jointly the parameters each group of "
                          "trials has, so conditional ones are modelled too (Caviar's default, true); false, Optuna's default: "
                          "the parameters not in every trial are sampled each on its own.")
    constant_liar: bool | None = Field(
        None, description=f"{' and '.join(TPE_SAMPLERS)} only: count running trials as poor ones while sampling, so parallel "
                          "trials spread out (default true, as Optuna's).")

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        return _one_of("sampler", value, SAMPLERS)

    @field_validator("multivariate", "group", "constant_liar")
    @classmethod
    def _tpe_only(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value is not None and "type" in info.data and info.data["type"] not in TPE_SAMPLERS:  # (a bad type is its own error)
            raise ValueError(f"{info.field_name} applies to sampler types {', '.join(TPE_SAMPLERS)} only, not '{info.data.get('type')}'")
        if info.field_name == "group" and value and info.data.get("multivariate") is False:
            raise ValueError("group needs multivariate: true (groups are modelled jointly)")
        return value

    def options(self) -> dict[str, bool | None]:
        """The TPE options as ``make_sampler`` takes them."""
        return {name: getattr(self, name) for name in TPE_OPTIONS}


class Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field("asha", description=f"One of: {', '.join(SCHEDULERS)}.")
    max_t: int | None = Field(None, ge=1, le=1000, description="Epochs; defaults to fixed.epochs.")
    grace_period: int = Field(2, ge=1, le=1000)
    reduction_factor: float = Field(3.0, gt=1.0, le=100.0)
    window: int | None = Field(
        None, ge=2, le=100_000,
        description="asha only: a trial goes on when it is in the top 1/reduction_factor of the last `window` trials "
                    "that reached its rung, not of all of them. ASHA expects trials to arrive in no particular order; "
                    "under a sampler that learns, later trials beat the early ones and most go on.")

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        return _one_of("scheduler", value, SCHEDULERS)

    @field_validator("window")
    @classmethod
    def _asha_only(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("type") != "asha":
            raise ValueError(f"window applies to scheduler type asha only, not '{info.data.get('type')}'")
        return value

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
    cpu: float = Field(1.0, ge=0.01, le=256, description="At least 0.01: Ray cannot place smaller shares.")
    gpu: float = Field(0.0, ge=0, le=16, description="May be fractional: 0.25 packs four trials on one GPU.")


class WarmStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    study: str = Field(pattern=r"^[0-9a-f]{16}$", description="An earlier study of the same owner (its id).")
    top_k: int = Field(5, ge=1, le=100, description="Its best configurations that fit this space run first. When this "
                       "study's space equals the earlier one's, the earlier finished trials also seed the sampler's history.")


class ForkFrom(BaseModel):
    """Where a forked study's one trial starts: an earlier trial's checkpoint at an epoch (POST .../fork sets it)."""

    model_config = ConfigDict(extra="forbid")
    study: str = Field(pattern=r"^[0-9a-f]{16}$")
    trial: str = Field(min_length=1, max_length=128)
    epoch: int = Field(ge=1, le=100_000)
    checkpoint: str = Field(min_length=1, max_length=1024, description="The checkpoint's directory in the study storage (set by the service).")
    changes: dict[str, Any] = Field(default_factory=dict, description="What differs from the earlier trial from epoch+1 on.")


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
                },
                {
                    "name": "mnist1d-mlp-inline",
                    "trainable": "mlp_bn_softmax",
                    "dataset": {"name": "mnist1d"},
                    "search_space": {
                        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                        "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
                        "optimizer": {"type": "categorical", "choices": ["momentum", "adam"]},
                        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": ["momentum"]}},
                    },
                    "fixed": {"epochs": 30},
                    "objective": {"metric": "val_loss", "mode": "min"},
                    "budget": {"num_trials": 64, "max_concurrent_trials": 4, "time_budget_s": 3600},
                },
                {
                    "name": "csv-presets-merged",
                    "trainable": "mlp_bn_softmax",
                    "dataset": {"name": "file", "path": "churn.csv", "target": "churned"},
                    "search_space": ["seven_key", "batchnorm", {"width": {"type": "int", "low": 16, "high": 256, "log": True}}],
                    "sampler": {"type": "random", "seed": 7},
                    "scheduler": {"type": "none"},
                },
            ]
        },
    )

    name: str = Field(pattern=NAME, description="A label for people; ids identify studies.")
    trainable: str = Field(min_length=1, max_length=128, description="A registered trainable (GET /v1/trainables).")
    dataset: DatasetSpec
    search_space: str | list[str | dict[str, Any]] | dict[str, Any] = Field(
        description="A preset name (GET /v1/search-spaces), an inline mapping of parameters, or a list of both merged "
        "left to right. Stored resolved: a study keeps the space it was submitted with."
    )
    fixed: dict[str, Any] = Field(default_factory=dict, description="Knob values every trial gets (e.g. epochs).")
    objective: Objective = Field(default_factory=Objective, description="What the study optimises. With `objectives`, the first of them.")
    objectives: list[Objective] | None = Field(
        None, min_length=2, max_length=MAX_OBJECTIVES,
        description="Several objectives at once (e.g. val_accuracy max and param_count min): the study looks for the Pareto front "
        "(GET .../pareto). Samplers: " + ", ".join(MULTI_OBJECTIVE_SAMPLERS) + "; scheduler asha becomes multi-objective ASHA "
        "(promotion by non-dominated sorting), or none. `objective` (the first) orders /best and the learning curves.")
    sampler: Sampler = Field(default_factory=Sampler)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    budget: Budget = Field(default_factory=Budget)
    resources_per_trial: Resources = Field(default_factory=Resources)
    warm_start: WarmStart | None = Field(None, description="Start from an earlier study's best (coarse-to-fine refine sets it).")
    fork: ForkFrom | None = Field(None, description="Set by POST .../trials/{id}/fork: the study's trial starts from that checkpoint.")
    mode: Literal["caviar", "panda"] = Field("caviar", description="caviar: many trials, the scheduler stops bad ones. panda: one "
                                             "configuration (or a handful) that a person steers while it runs (POST .../trials/{id}/adjust); "
                                             "no early stopping.")

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, value: list[Objective] | None) -> list[Objective] | None:
        metrics = [o.metric for o in value or []]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"each metric once (got {', '.join(metrics)})")
        return value

    @model_validator(mode="after")
    def _objectives(self) -> StudyDefinition:
        if self.objectives is None:
            return self
        if "objective" in self.model_fields_set and self.objective != self.objectives[0]:
            raise ValidationError.from_exception_data(type(self).__name__, [InitErrorDetails(
                type=PydanticCustomError("conflict", "give objective or objectives, not both (with objectives, objective is the first)"),
                loc=("objective",), input=self.objective.model_dump())])
        self.objective = self.objectives[0]
        return self

    @model_validator(mode="after")
    def _panda(self) -> StudyDefinition:
        if self.mode == "panda" and "scheduler" not in self.model_fields_set:  # a steered trial is not stopped early
            self.scheduler = Scheduler(type="none")
        return self

    def objective_list(self) -> list[Objective]:
        """The objectives: ``objectives``, or the one ``objective``."""
        return list(self.objectives) if self.objectives else [self.objective]

    def epochs(self) -> int:
        return int(self.fixed.get("epochs") or self.scheduler.max_t or 20)

    def rungs(self) -> list[float]:
        """The epochs at which ASHA decides (its rungs, as Ray's AsyncHyperBandScheduler with one
        bracket places them: grace_period * reduction_factor**k below max_t); the median rule judges
        from grace_period on; other schedulers have none."""
        s = self.scheduler
        if s.type == "median":
            return [float(s.grace_period)]
        if s.type != "asha":
            return []
        max_t = s.max_t or self.epochs()
        count = int(math.log(max_t / s.grace_period) / math.log(s.reduction_factor) + 1)
        return [r for r in (s.grace_period * s.reduction_factor**k for k in range(count)) if r < max_t]  # one at max_t cuts nothing

    def constants(self) -> dict[str, Any]:
        """What every trial's config holds besides its sampled values (the trainable reads both)."""
        return {**self.fixed, "epochs": self.epochs(), "dataset": self.dataset.model_dump()}

    def space(self) -> SearchSpace:
        """The search space; a stored (frozen) definition holds it as a mapping already."""
        if isinstance(self.search_space, dict):
            return parse_space(self.search_space)
        return resolve_space(self.search_space)


def freeze(d: StudyDefinition, space: SearchSpace) -> dict[str, Any]:
    """The definition as stored: JSON, with the search space resolved (presets expanded)."""
    return {**d.model_dump(mode="json"), "search_space": space.to_dict()}


def _space_error(exc: SearchSpaceError) -> DefinitionError:
    return DefinitionError(f"search_space.{exc.parameter}" if exc.parameter else "search_space", exc.rule)


def check_definition(d: StudyDefinition, *, max_grid_points: int, cluster: dict[str, float] | None, data_dir: Path,
                     max_file_bytes: int = MAX_FILE_BYTES) -> SearchSpace:
    """Check a shape-valid definition against the registries; returns its resolved search space.

    ``cluster`` is the largest Ray node's resources (None when Ray is unreachable: resource
    checks are then left to Ray).
    """
    try:
        spec = get_trainable(d.trainable)
    except UnknownTrainable as exc:
        raise DefinitionError("trainable", str(exc)) from None
    if d.objective.metric not in spec.metrics and not d.objectives:
        raise DefinitionError("objective.metric", f"'{d.trainable}' does not report '{d.objective.metric}' (it reports: {', '.join(spec.metrics)})")
    for i, o in enumerate(d.objectives or []):
        if o.metric not in spec.metrics:
            raise DefinitionError(f"objectives.{i}.metric", f"'{d.trainable}' does not report '{o.metric}' (it reports: {', '.join(spec.metrics)})")
    if d.objectives and d.sampler.type not in MULTI_OBJECTIVE_SAMPLERS:
        raise DefinitionError("sampler.type", f"'{d.sampler.type}' optimises one objective; with several use one of: {', '.join(MULTI_OBJECTIVE_SAMPLERS)}")
    if d.objectives and d.scheduler.type not in MULTI_OBJECTIVE_SCHEDULERS:
        raise DefinitionError("scheduler.type", f"'{d.scheduler.type}' judges one objective; with several use one of: "
                              f"{', '.join(MULTI_OBJECTIVE_SCHEDULERS)} (asha promotes by non-dominated sorting)")
    if d.objectives and d.scheduler.window is not None:
        raise DefinitionError("scheduler.window", "applies to one objective (multi-objective ASHA compares every trial at a rung)")
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
            check_file(d.dataset, data_dir, max_file_bytes)
        except DatasetError as exc:
            field, _, rule = str(exc).partition(": ")
            raise DefinitionError(field, rule) from None
    if d.mode == "panda" and d.scheduler.type != "none":
        raise DefinitionError("scheduler.type", "panda mode trains without early stopping: leave the scheduler out or use none")
    if d.mode == "panda" and d.budget.num_trials > MAX_PANDA_TRIALS:
        raise DefinitionError("budget.num_trials", f"panda mode trains at most {MAX_PANDA_TRIALS} trials, each watched by a person")
    if d.scheduler.max_t is not None and "epochs" in d.fixed and d.scheduler.max_t > d.fixed["epochs"]:
        raise DefinitionError("scheduler.max_t", f"must be <= fixed.epochs ({d.fixed['epochs']})")
    if d.scheduler.type in RUNG_BASED and d.scheduler.grace_period > d.epochs():
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
                raise DefinitionError(f"resources_per_trial.{key}", f"asks for {want:g} {ray_key} per trial; the Ray cluster has {have:g}")
    return space


def trial_outcome(result: dict[str, Any] | None, epochs: int, error: bool = False) -> TrialState:
    """completed | stopped_early | failed, from a trial's last result (one rule for the store and Optuna)."""
    if error or not result or result.get("diverged"):
        return TrialState.FAILED
    if int(result.get("epoch") or 0) < int((result.get("config") or {}).get("epochs") or epochs):
        return TrialState.STOPPED_EARLY
    return TrialState.COMPLETED
