"""How each scheduler named in ``service.definition.SCHEDULERS`` is built as a Ray Tune scheduler.

The names are the definition's (the API validates ``scheduler.type`` against them without this
module); here is the one place that builds each, checked at import to cover exactly those names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule
from ray.tune.schedulers.async_hyperband import _Bracket

from service.definition import SCHEDULERS, Scheduler
from service.runner.mo_asha import MultiObjectiveASHA


class _RecentBracket(_Bracket):
    """Ray's ASHA bracket, with each rung's cutoff over the last ``window`` values recorded there."""

    def __init__(self, *args: Any, window: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.window = window

    def cutoff(self, recorded: dict[str, float]) -> Any:
        if not recorded:
            return None
        recent = list(recorded.values())[-self.window:]  # in the order trials reached the rung
        return np.nanpercentile(recent, (1 - 1 / self.rf) * 100)


class RecentASHA(ASHAScheduler):
    """Ray's ASHA (one bracket, stop or go on at each rung), judging a trial against the last
    ``window`` trials that reached its rung instead of all of them.

    ASHA's promotion rule assumes trials arrive in no particular order. A model-based sampler breaks
    that: its later trials are better than its early ones, so against all the values recorded at a
    rung most of them are in the top third and go on (on a 64-trial MNIST-1D study with TPE, 20
    trials ran all 30 epochs where successive halving meant 2 or 3). Against the recent ones, a
    trial goes on when it is good among its peers."""

    def __init__(self, *, window: int, grace_period: int, max_t: int, reduction_factor: float, **kwargs: Any) -> None:
        super().__init__(grace_period=grace_period, max_t=max_t, reduction_factor=reduction_factor, **kwargs)
        self._brackets = [_RecentBracket(grace_period, max_t, reduction_factor, 0, window=window)]


Builder = Callable[[Scheduler, int], Any]  # (the study's scheduler settings, epochs a trial runs) -> a Tune scheduler


def _asha(s: Scheduler, epochs: int) -> Any:
    if s.window is not None:
        return RecentASHA(window=s.window, time_attr="epoch", max_t=s.max_t or epochs, grace_period=s.grace_period,
                          reduction_factor=s.reduction_factor)
    return ASHAScheduler(time_attr="epoch", max_t=s.max_t or epochs, grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def _hyperband(s: Scheduler, epochs: int) -> Any:
    return HyperBandScheduler(time_attr="epoch", max_t=s.max_t or epochs, reduction_factor=s.reduction_factor)


def _median(s: Scheduler, epochs: int) -> Any:
    return MedianStoppingRule(time_attr="epoch", grace_period=s.grace_period, min_samples_required=3)


def _none(s: Scheduler, epochs: int) -> Any:
    return FIFOScheduler()


BUILDERS: dict[str, Builder] = {"asha": _asha, "hyperband": _hyperband, "median": _median, "none": _none}
if tuple(BUILDERS) != SCHEDULERS:  # pragma: no cover - a scheduler named without a builder, or the reverse
    raise RuntimeError(f"scheduler builders {tuple(BUILDERS)} do not match the names {SCHEDULERS}")


def rungs(s: Scheduler, epochs: int) -> list[int]:
    """The epochs at which ASHA judges a trial (Ray's own rungs: grace_period x reduction_factor^k
    below max_t, each at the first epoch at or past it), and max_t: where the searcher tells Optuna
    a trial's value, so that a multi-fidelity sampler can compare trials at the same epoch. The same
    rungs whatever the scheduler's type."""
    max_t = s.max_t or epochs
    milestones = (m for m, _ in _Bracket(s.grace_period, max_t, s.reduction_factor, 0)._rungs)
    return sorted({*(math.ceil(m - 1e-9) for m in milestones), max_t})


def make_scheduler(s: Scheduler, epochs: int, objectives: Sequence[tuple[str, str]] | None = None) -> Any:
    """The study's scheduler; with several ``objectives`` ((metric, mode) pairs) asha is
    multi-objective ASHA (the definition admits only asha and none then)."""
    if objectives and len(objectives) > 1 and s.type == "asha":
        return MultiObjectiveASHA(objectives, time_attr="epoch", max_t=s.max_t or epochs, grace_period=s.grace_period,
                                  reduction_factor=s.reduction_factor)
    return BUILDERS[s.type](s, epochs)
