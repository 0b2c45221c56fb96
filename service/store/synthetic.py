"""A synthetic study written straight into the store, as a study's driver would have left it: what
the UI benchmark (bench/ui_load.py) and the UI tests load at sizes no test could train (10,000
trials). The learning curves rise and saturate by each trial's quality; at every ASHA rung the
trials below the top 1/reduction_factor stop there, as ASHA stops them. With several objectives each
further one trades against the first: a better trial costs more (e.g. more parameters)."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select

from service.definition import StudyDefinition, freeze
from service.store.models import EventRow, MetricRow, StudyRow, TrialRow, now


def synthetic_study(store: Any, definition: dict[str, Any], num_trials: int, *, seed: int = 0, running: int = 0,
                    owner: str = "local", status: str = "completed") -> str:
    """Store a study of ``num_trials`` finished trials (and ``running`` still running); its id."""
    d = StudyDefinition.model_validate(definition)
    space = d.space()
    rng = random.Random(seed)
    epochs, rungs = d.epochs(), d.rungs() if d.scheduler.type == "asha" else []
    rf = d.scheduler.reduction_factor
    row = store.studies.create(d.name, freeze(d, space), owner=owner)
    start = now() - timedelta(seconds=num_trials * 2 + 60)
    trials, metrics, events = [], [], []
    qualities = [rng.random() for _ in range(num_trials + running)]
    with store.db.session(write=True) as s:
        for i, q in enumerate(qualities):
            config = {name: _sample(p, rng) for name, p in space.to_dict().items() if not p.get("when")}
            last = epochs
            if i >= num_trials:
                last = rng.randint(1, max(1, epochs - 1))
            else:  # ASHA: below the top 1/rf of the trials at a rung, a trial stops there
                for k, rung in enumerate(rungs):
                    if q < 1 - rf ** -(k + 1):
                        last = int(rung)
                        break
            curve = [round(0.1 + 0.85 * q * (1 - math.exp(-(e + 1) / 3)) + rng.gauss(0, 0.01), 4) for e in range(last)]
            state = "running" if i >= num_trials else ("completed" if last >= epochs else "stopped_early")
            started = start + timedelta(seconds=i * 2)
            finished = None if state == "running" else started + timedelta(seconds=last * 0.5)
            trial_id = f"t{i:05d}"
            extra = {o.metric: round((q if o.mode == "min" else 1 - q) * 1e5 * rng.uniform(0.3, 1.7), 1) for o in d.objective_list()[1:]}
            trials.append({"study_id": row.id, "trial_id": trial_id, "state": state, "config": config, "epochs": last,
                           "last_metrics": {d.objective.metric: curve[-1], "epoch": last, **extra}, "best_value": max(curve) if d.objective.mode == "max" else min(curve),
                           "error": None, "retries": 0, "node": "127.0.0.1", "started_at": started, "finished_at": finished})
            metrics += [{"trial_id": trial_id, "epoch": e + 1, "values": {d.objective.metric: v, "epoch": e + 1,
                                                                    "reported_at": (started + timedelta(seconds=(e + 1) * 0.5)).timestamp()}}
                        for e, v in enumerate(curve)]
            events.append({"study_id": row.id, "trial_id": trial_id, "kind": "trial_started", "data": {}, "at": started})
            if finished is not None:
                events.append({"study_id": row.id, "trial_id": trial_id, "kind": state, "data": {}, "at": finished})
        s.execute(insert(TrialRow), trials)
        pks = dict(s.execute(select(TrialRow.trial_id, TrialRow.pk).where(TrialRow.study_id == row.id)).all())
        metrics = [{"trial_pk": pks[m.pop("trial_id")], **m} for m in metrics]
        for i in range(0, len(metrics), 5000):
            s.execute(insert(MetricRow), metrics[i:i + 5000])
        s.execute(insert(EventRow), events)
        values: dict[str, Any] = {"status": status, "started_at": start}
        if status not in ("queued", "running"):
            values["finished_at"] = now()
        s.query(StudyRow).filter(StudyRow.id == row.id).update(values)
    return str(row.id)


def _sample(p: dict[str, Any], rng: random.Random) -> Any:
    if p["type"] == "categorical":
        return rng.choice(p["choices"])
    lo, hi = p["low"], p["high"]
    x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if p.get("log") else rng.uniform(lo, hi)
    return round(x) if p["type"] == "int" else x
