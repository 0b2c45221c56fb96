"""The API's response models (the request body is :class:`service.definition.StudyDefinition`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.definition import Objective, StudyStatus, TrialState


def json_bytes(model: BaseModel) -> bytes:
    """A response model as the JSON body, serialized once by pydantic: a route that returns these bytes
    in a Response skips FastAPI's second validation and serialization of what it already built
    (its ``response_model`` still documents it). NaN and infinities become null."""
    return model.__pydantic_serializer__.to_json(model)


class Problem(BaseModel):
    """RFC 9457 problem details: every error the API returns."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = Field(None, description="The dotted path of the field at fault (search_space.lr, dataset.path, Authorization, ...).")
    errors: list[dict[str, str]] | None = Field(None, description="Every field at fault: {field, message}.")


class TrainableOut(BaseModel):
    name: str
    description: str
    metrics: list[str] = Field(description="What the trainable reports each epoch: the names an objective may use.")
    knobs: dict[str, Any] = Field(description="Knob name -> default: what a search space or `fixed` may set.")
    adjustable: list[str] = Field(default_factory=list, description="Knobs a person may change while a trial runs (panda mode).")


class SearchSpaceOut(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any] = Field(description="Parameter name -> declaration (see the SearchSpace schema).")


class TrialOut(BaseModel):
    trial_id: str
    state: TrialState
    config: dict[str, Any]
    epochs: int
    last_metrics: dict[str, Any] | None
    best_value: float | None = Field(description="Best objective value over the trial's epochs.")
    error: str | None
    retries: int = Field(0, description="Times the trial failed and was retried from its last checkpoint.")
    node: str | None = Field(None, description="The Ray node (its IP) the trial last reported from.")
    device: str | None = Field(None, description="The device it trained on, as its trainable reports it (`cpu`, `cuda:0 (NVIDIA H200, physical 3)`).")
    started_at: datetime | None
    finished_at: datetime | None


class Intervention(BaseModel):
    id: int
    changes: dict[str, Any] = Field(description="Knob -> new value.")
    by: str = Field(description="The owner of the token that asked.")
    requested_at: datetime
    after_epoch: int | None = Field(description="The epoch after which it applied (it holds from the next one on); None while pending.")


class TrialDetail(TrialOut):
    history: list[dict[str, Any]] = Field(
        description="One entry per epoch: the learning curve; `reported_at` is when the study's driver received it (Unix seconds). "
                    "An epoch run again (Ray Tune retrying a trial from the checkpoint before, after a lost worker) keeps its first "
                    "report, and the trial's `best_value` and `last_metrics` are always among these entries."
    )
    interventions: list[Intervention] = Field(default_factory=list, description="Panda mode: the changes a person made while it ran.")


class StudySummary(BaseModel):
    """A study as a listing shows it: all of ``StudyOut`` but its definition."""

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
    owner: str = Field(description="Owner of the API token that submitted the study ('local': loopback without a token).")
    resumes: int = Field(0, description="Times the study was resumed from Tune's saved state after its Ray job died.")
    parent_id: str | None = Field(None, description="The study it was warm-started or refined from; its children: GET /v1/studies?parent_id=ID.")
    extended_at: datetime | None = Field(None, description="When it was last extended with more trials (POST .../extend).")
    num_trials: int = Field(description="Its budget's num_trials (an extension raises it): how many trials it runs in all.")


class StudyOut(StudySummary):
    definition: dict[str, Any] = Field(description="As submitted, with its search space resolved (presets expanded).")


class StudyPage(BaseModel):
    items: list[StudyOut]
    total: int
    offset: int
    limit: int


class StudySummaryPage(BaseModel):
    items: list[StudySummary]
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


class ParetoPoint(BaseModel):
    trial_id: str
    values: dict[str, float | None] = Field(description="Objective metric -> the trial's value at its last epoch.")
    config: dict[str, Any] | None = Field(None, description="Set for the trials on the front.")


class ParetoOut(BaseModel):
    study_id: str
    objectives: list[Objective]
    states: list[str] = Field(description="The trial states considered: completed (trained for all their epochs; a trial "
                              "stopped early has a lower-fidelity value and is not compared).")
    trials_considered: int
    front: list[ParetoPoint] = Field(description="The non-dominated trials, by the first objective best first.")
    points: list[ParetoPoint] = Field(description="The considered trials for a scatter (without configs): all of them up to "
                                      "2,000, else the front and an even sample of the rest.")


class ImportanceOut(BaseModel):
    study_id: str
    evaluator: str = Field(description="How importances are computed.")
    states: list[str] = Field(description="The trial states used; each trial counts with its best objective value.")
    trials_used: int = Field(description="Trials the evaluator saw: all measured ones, or an even sample of 1,000 over the study's order.")
    trials_measured: int = Field(description="Completed and stopped-early trials with a value.")
    importances: dict[str, float] = Field(description="Parameter -> importance (they sum to 1), most important first. "
                                          "Conditional parameters (not in every trial) are left out.")


class RefineRequest(BaseModel):
    """POST /v1/studies/{id}/refine: a new study in the parent's space narrowed around its top-k. Any
    other key is a definition override (e.g. `name`, `sampler`, `budget: {max_concurrent_trials: 4}`),
    merged into the parent's definition one level deep."""

    model_config = {"extra": "allow"}
    top_k: int = Field(5, ge=1, le=100, description="Narrow around this many best trials; they run first in the new study.")
    num_trials: int = Field(16, ge=1, le=10_000, description="The new study's budget.num_trials.")
    margin: float = Field(0.25, ge=0, le=2, description="Pads the top-k's span by this fraction on each side (log-aware).")


class RefineOut(BaseModel):
    parent_id: str
    definition: dict[str, Any] = Field(description="The new study's definition, its narrowed search space resolved.")
    narrowed: dict[str, dict[str, Any]] = Field(description="Parameter -> {before, after}: what narrowing changed.")


class ExtendRequest(BaseModel):
    model_config = {"extra": "forbid"}
    num_trials: int = Field(ge=1, le=10_000, description="How many more trials to run.")


class ScheduleIn(BaseModel):
    model_config = {"extra": "forbid"}
    definition: dict[str, Any] = Field(description="A study definition (as POST /v1/studies takes it), without warm_start: each run after "
                                       "the first is warm-started from the previous run's best.")
    every: str = Field(pattern=r"^\s*\d{1,9}\s*[smhdw]\s*$", description="How often: a number and a unit, s m h d or w (`30d`, "
                       "`12h`); at least 60 s, at most 366 d.", examples=["30d"])
    top_k: int = Field(5, ge=1, le=100, description="How many of the previous run's best configurations run first (and are re-evaluated).")
    start_at: datetime | None = Field(None, description="The first run (default: now).")


class ScheduleRunOut(BaseModel):
    study_id: str
    status: StudyStatus | None = Field(description="The study's status (None if it was deleted).")
    started_at: datetime
    previous_study_id: str | None
    best_value: float | None = Field(description="This run's best objective value.")
    best_config: dict[str, Any] | None
    previous_best_value: float | None = Field(description="The previous run's best value, as measured then.")
    reevaluated_value: float | None = Field(description="The previous run's best configuration, trained again in this run (on today's data).")
    drift: float | None = Field(description="reevaluated_value - previous_best_value: how the old best fares on today's data.")
    gain: float | None = Field(description="best_value - reevaluated_value: what re-tuning found beyond the old best today.")


class ScheduleOut(BaseModel):
    id: str
    name: str
    owner: str
    every: str
    every_s: int
    top_k: int
    paused: bool
    next_run_at: datetime
    last_study_id: str | None
    last_error: str | None = Field(description="Why the last due run could not start (quota, a definition no longer valid), if it could not.")
    created_at: datetime
    definition: dict[str, Any]
    runs: list[ScheduleRunOut]


class ForkRequest(BaseModel):
    model_config = {"extra": "forbid"}
    from_epoch: int = Field(ge=1, le=100_000, description="Start from the trial's checkpoint at this epoch.")
    changes: dict[str, Any] = Field(default_factory=dict, description="Adjustable knobs that differ from then on (e.g. {lr: 0.003}).")
