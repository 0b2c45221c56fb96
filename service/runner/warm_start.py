"""Warm start: what a study takes from an earlier one (``warm_start: {study, top_k}``).

- The earlier study's ``top_k`` best configurations, cut to what this space can run
  (``SearchSpace.fit``), are enqueued: they run first, the sampler fills in what they lack.
- When this study's space equals the earlier one's, the earlier finished trials also become the
  sampler's history (completed with their last value, stopped-early ones as pruned at the epoch
  they reached), so TPE does not start from scratch. In a different space their values would be
  from another problem; only the enqueued configurations carry over.
"""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces import SearchSpace
from service.definition import StudyDefinition
from service.store import Store

MEASURED = ("completed", "stopped_early")


def warm_start_plan(store: Store, d: StudyDefinition, space: SearchSpace) -> tuple[list[dict[str, Any]], list[optuna.trial.FrozenTrial]]:
    """(configurations to run first, trials for the sampler's history)."""
    if d.warm_start is None:
        return [], []
    parent = store.studies.get(d.warm_start.study)
    if parent is None:  # deleted since submission: nothing to start from
        return [], []
    theirs = parent.definition.get("objectives") or [parent.definition.get("objective")]
    points = []  # the earlier study's best by its own objectives (several: its Pareto front first)
    for t in store.trials.top(parent.id, [(o["metric"], o["mode"]) for o in theirs], d.warm_start.top_k):
        fitted = space.fit(t.config)
        if fitted and fitted not in points:
            points.append(fitted)
    history: list[optuna.trial.FrozenTrial] = []
    objectives = [o.model_dump() for o in d.objective_list()]
    if parent.definition.get("search_space") == space.to_dict() and theirs == objectives:
        dists = space.distributions()
        for t in store.trials.for_study(parent.id):
            raw = [(t.last_metrics or {}).get(o["metric"]) for o in objectives]
            if t.state not in MEASURED or not all(isinstance(v, (int, float)) for v in raw):
                continue
            values = [float(v) for v in raw]  # type: ignore[arg-type]
            value = values[0]
            params = space.fit(t.config)
            distributions = {k: dists[k] for k in params}
            if t.state == "completed":
                history.append(optuna.trial.create_trial(params=params, distributions=distributions, values=values))
            elif len(values) > 1:  # Optuna keeps no intermediate values with several objectives
                history.append(optuna.trial.create_trial(params=params, distributions=distributions, state=optuna.trial.TrialState.PRUNED))
            else:
                history.append(optuna.trial.create_trial(params=params, distributions=distributions, state=optuna.trial.TrialState.PRUNED,
                                                         intermediate_values={int(t.epochs or 1): value}))
    return points, history
