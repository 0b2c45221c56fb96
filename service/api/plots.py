"""The study page's plots, aggregated on the server: what a browser draws for a study of any size.

A study may hold 10,000 trials of 100 epochs each; the page must not download them. This module
reads one light row per trial and the learning curves of a bounded sample, and answers with at
most ``MAX_POINTS`` history points, ``MAX_CURVES`` curves and ``MAX_ROWS`` parallel-coordinate
rows. Every sample keeps what a reader looks for (the best trials, the running ones, every step
of the best-so-far line) and fills the rest evenly over the study's order, so the shape holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.definition import StudyDefinition
from service.store import Store, StudyRow, TrialRow

MAX_POINTS = 2000  # optimization history: trial values drawn as dots (every best-so-far step is kept besides)
MAX_CURVES = 200  # learning curves drawn
MAX_ROWS = 500  # parallel-coordinate lines
TOP = 25  # best trials always among the curves and the lines
MEASURED = ("completed", "stopped_early")


class History(BaseModel):
    points: list[tuple[int, float, float]] = Field(description="[n, seconds since the study started, value] of finished trials "
                                                   "(n counts them in the order they finished); a sample when there are many.")
    best: list[tuple[int, float, float]] = Field(description="Every step of the best-so-far line: [n, seconds, best value].")
    total: int = Field(description="Finished trials with a value.")


class Curve(BaseModel):
    trial_id: str
    state: str
    values: list[float | None] = Field(description="The objective per epoch, epoch 1 first.")


class Curves(BaseModel):
    metric: str
    rungs: list[float] = Field(description="Epochs at which the scheduler decides (ASHA's rungs; the median rule's start).")
    scheduler: str
    max_epochs: int
    total: int = Field(description="Trials that reported at least one epoch.")
    items: list[Curve] = Field(description="The best trials, the running ones and an even sample of the rest.")


class Parallel(BaseModel):
    params: dict[str, dict[str, Any]] = Field(description="The search space: each axis's declaration.")
    total: int
    rows: list[dict[str, Any]] = Field(description="{trial_id, value, state, config}; the best trials and an even sample.")


class PlotsOut(BaseModel):
    study_id: str
    objective: dict[str, str]
    history: History
    curves: Curves
    parallel: Parallel


def even(items: Sequence[Any], k: int) -> list[Any]:
    """``k`` items spread evenly over ``items`` (all of them when there are no more than ``k``)."""
    n = len(items)
    if n <= k:
        return list(items)
    if k <= 0:
        return []
    return [items[(i * (n - 1)) // max(k - 1, 1)] for i in range(k)] if k > 1 else [items[0]]


def _seconds(at: datetime | None, start: datetime | None) -> float:
    return round((at - start).total_seconds(), 3) if at is not None and start is not None else 0.0


def build(study: StudyRow, trials: list[TrialRow], curves_of: Any, *, max_points: int = MAX_POINTS,
          max_curves: int = MAX_CURVES, max_rows: int = MAX_ROWS) -> PlotsOut:
    """The plots of ``study`` from its trials (light rows); ``curves_of(trial_ids)`` reads the
    learning curves of the sample only."""
    d = StudyDefinition.model_validate(study.definition)
    maximize = d.objective.mode == "max"
    start = study.started_at or study.created_at

    def better(a: float, b: float) -> bool:
        return a > b if maximize else a < b

    # optimization history: finished trials with a value, in the order they finished
    done = sorted((t for t in trials if t.best_value is not None and t.finished_at is not None),
                  key=lambda t: (t.finished_at, t.pk))
    points = [(n, _seconds(t.finished_at, start), float(t.best_value)) for n, t in enumerate(done, 1)]  # type: ignore[arg-type]
    steps: list[tuple[int, float, float]] = []
    for p in points:
        if not steps or better(p[2], steps[-1][2]):
            steps.append(p)
    history = History(points=even(points, max_points), best=steps, total=len(points))

    ranked = sorted((t for t in trials if t.best_value is not None), key=lambda t: (-t.best_value if maximize else t.best_value, t.pk))  # type: ignore[operator]
    top = ranked[:TOP]

    # learning curves: the best, the running, then an even sample of the rest
    reported = [t for t in trials if t.epochs]
    chosen: dict[str, TrialRow] = {t.trial_id: t for t in top}
    for t in reported:
        if len(chosen) >= max_curves:
            break
        if t.state == "running":
            chosen.setdefault(t.trial_id, t)
    rest = [t for t in reported if t.trial_id not in chosen]
    for t in even(rest, max_curves - len(chosen)):
        chosen[t.trial_id] = t
    order = sorted(chosen.values(), key=lambda t: t.pk)
    values = curves_of([t.trial_id for t in order])
    curves = Curves(metric=d.objective.metric, rungs=d.rungs(), scheduler=d.scheduler.type, max_epochs=d.epochs(),
                    total=len(reported), items=[Curve(trial_id=t.trial_id, state=t.state, values=values.get(t.trial_id, [])) for t in order])

    # parallel coordinates: measured trials, the best first, then an even sample
    measured = [t for t in trials if t.best_value is not None and t.state in MEASURED]
    keep = {t.trial_id for t in top if t.state in MEASURED}
    sample = [t for t in measured if t.trial_id in keep] + even([t for t in measured if t.trial_id not in keep], max_rows - len(keep))
    parallel = Parallel(params=d.space().to_dict(), total=len(measured),
                        rows=[{"trial_id": t.trial_id, "value": t.best_value, "state": t.state, "config": t.config}
                              for t in sorted(sample, key=lambda t: t.pk)])
    return PlotsOut(study_id=study.id, objective=d.objective.model_dump(), history=history, curves=curves, parallel=parallel)


def plots(store: Store, study: StudyRow) -> PlotsOut:
    trials = store.trials.for_study(study.id)
    metric = str(study.definition["objective"]["metric"])
    return build(study, trials, lambda ids: store.trials.curves(study.id, ids, metric))
