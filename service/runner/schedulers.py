"""How each scheduler named in ``service.definition.SCHEDULERS`` is built as a Ray Tune scheduler.

The names are the definition's (the API validates ``scheduler.type`` against them without this
module); here is the one place that builds each, checked at import to cover exactly those names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule

from service.definition import SCHEDULERS, Scheduler
from service.runner.mo_asha import MultiObjectiveASHA

Builder = Callable[[Scheduler, int], Any]  # (the study's scheduler settings, epochs a trial runs) -> a Tune scheduler


def _asha(s: Scheduler, epochs: int) -> Any:
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
    """The epochs at which ASHA judges a trial (Ray's rungs: grace_period x reduction_factor^k below
    max_t), and max_t: where the searcher tells Optuna a trial's value, so that a multi-fidelity
    sampler can compare trials at the same epoch. The same rungs whatever the scheduler's type."""
    max_t = s.max_t or epochs
    count = int(math.log(max_t / s.grace_period) / math.log(s.reduction_factor) + 1)  # as Ray's _Bracket counts them
    # Ray judges a trial at the first epoch at or past each (possibly fractional) milestone
    return sorted({*(math.ceil(s.grace_period * s.reduction_factor ** k - 1e-9) for k in range(count)), max_t})


def make_scheduler(s: Scheduler, epochs: int, objectives: Sequence[tuple[str, str]] | None = None) -> Any:
    """The study's scheduler; with several ``objectives`` ((metric, mode) pairs) asha is
    multi-objective ASHA (the definition admits only asha and none then)."""
    if objectives and len(objectives) > 1 and s.type == "asha":
        return MultiObjectiveASHA(objectives, time_attr="epoch", max_t=s.max_t or epochs, grace_period=s.grace_period,
                                  reduction_factor=s.reduction_factor)
    return BUILDERS[s.type](s, epochs)
