"""Multi-objective ASHA as a Ray Tune scheduler (Schmucker et al., "Multi-objective Asynchronous
Successive Halving", 2021).

Ray Tune's ASHA and Optuna's pruners judge one metric. This is Ray's asynchronous successive halving
(one bracket, rungs at grace_period * reduction_factor**k, a trial judged once per rung against the
trials recorded there before it) with the comparison made by several objectives: at a rung the
trial's point joins the points recorded there, they are ordered by non-dominated sorting with
NSGA-II's crowding distance breaking ties within a front (``service.pareto.order``), and the trial
goes on when its position is among the top of that order in the share ASHA keeps (1/reduction_factor).

The share is Ray's: its ASHA stops a trial whose value is below the (1 - 1/rf) percentile of the m
values recorded before it. An order of several objectives has positions, not values to interpolate
between, so the percentile here is the recorded value at or below it (numpy's "lower"): a trial goes
on when fewer than m - floor((m - 1)(1 - 1/rf)) of the m are ahead of it. Where Ray's percentile
falls between two recorded values this keeps a trial Ray might stop (at most one position more
generous); otherwise, with one objective, it decides exactly as Ray's ``ASHAScheduler``
(tests/service/test_mo_asha.py checks both on random streams).

A trial stopped here ends with fewer epochs than it was configured for: the store records it as
stopped early, and the searcher tells Optuna it was PRUNED (``service.runner.searcher``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from service.pareto import Point, keys, minimized


def kept(m: int, reduction_factor: float) -> int:
    """How many of the m + 1 points at a rung (m recorded before the trial) a trial may be behind
    of and still go on: Ray's percentile rule in positions."""
    if m == 0:
        return 1
    return m - math.floor((m - 1) * (1 - 1 / reduction_factor) + 1e-9)


class MultiObjectiveASHA(FIFOScheduler):
    """``objectives``: (metric, mode) pairs. ``time_attr`` counts a trial's progress (Caviar: ``epoch``)."""

    def __init__(self, objectives: Sequence[tuple[str, str]], *, time_attr: str = "epoch", max_t: int = 100,
                 grace_period: int = 1, reduction_factor: float = 4.0) -> None:
        super().__init__()
        if grace_period < 1 or max_t < grace_period or reduction_factor <= 1:
            raise ValueError("need 1 <= grace_period <= max_t and reduction_factor > 1")
        self.objectives = [(str(m), str(mode)) for m, mode in objectives]
        self.time_attr, self.max_t, self.rf = time_attr, max_t, reduction_factor
        count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
        self.rungs: list[tuple[float, dict[str, Point]]] = [(grace_period * reduction_factor**k, {}) for k in reversed(range(count))]
        self.num_stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # it judges its own objectives; Tune's metric (the first of them) changes nothing

    def _judge(self, trial_id: str, t: float, point: Point) -> str:
        """ASHA's step with the multi-objective order: the highest rung reached and not yet recorded
        decides. The trial's position is how many recorded points are ahead of it in the order;
        points equal to it are not (a tie goes the trial's way, as in Ray's ``value < cutoff``)."""
        for milestone, recorded in self.rungs:  # highest first
            if t < milestone or trial_id in recorded:
                continue
            pts = [*recorded.values(), point]
            k = keys(pts)
            mine = k[-1]
            position = sum(1 for q, kq in zip(pts[:-1], k[:-1], strict=True) if kq < mine and q != point)
            recorded[trial_id] = point
            return TrialScheduler.CONTINUE if position < kept(len(pts) - 1, self.rf) else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    @staticmethod
    def _finite(point: Point) -> bool:
        return all(math.isfinite(v) for v in point)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if self.time_attr not in result:
            return TrialScheduler.CONTINUE
        point = minimized(result, self.objectives)
        if result[self.time_attr] >= self.max_t:
            action = TrialScheduler.STOP
        elif not self._finite(point):  # a result without every objective (or NaN) is not judged, as in Ray's ASHA
            return TrialScheduler.CONTINUE
        else:
            action = self._judge(trial.trial_id, result[self.time_attr], point)
        if action == TrialScheduler.STOP and result[self.time_attr] < self.max_t:
            self.num_stopped += 1
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        point = minimized(result or {}, self.objectives)
        if result and self.time_attr in result and self._finite(point):  # recorded where it ended, for the trials that come later
            self._judge(trial.trial_id, result[self.time_attr], point)

    def debug_string(self) -> str:
        rungs = ", ".join(f"{m:g}: {len(r)}" for m, r in reversed(self.rungs))
        return f"Using multi-objective ASHA: num_stopped={self.num_stopped}; trials recorded per rung {{{rungs}}}"
