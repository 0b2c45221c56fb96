"""Trial schedulers by name: the one list of names (``SCHEDULERS``), each with the function that
builds its Ray Tune scheduler.

The API validates ``scheduler.type`` against these names without loading Ray Tune: each builder
imports Ray when it is called, in the study's driver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.definition import Scheduler

Builder = Callable[["Scheduler", int], Any]  # (the study's scheduler settings, epochs a trial runs) -> a Tune scheduler


def _asha(s: Scheduler, epochs: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", max_t=s.max_t or epochs, grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def _hyperband(s: Scheduler, epochs: int) -> Any:
    from ray.tune.schedulers import HyperBandScheduler

    return HyperBandScheduler(time_attr="epoch", max_t=s.max_t or epochs, reduction_factor=s.reduction_factor)


def _median(s: Scheduler, epochs: int) -> Any:
    from ray.tune.schedulers import MedianStoppingRule

    return MedianStoppingRule(time_attr="epoch", grace_period=s.grace_period, min_samples_required=3)


def _none(s: Scheduler, epochs: int) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


SCHEDULERS: dict[str, Builder] = {"asha": _asha, "hyperband": _hyperband, "median": _median, "none": _none}
# schedulers that stop trials at rungs, for which grace_period must fit in a trial's epochs
RUNG_BASED = ("asha", "hyperband")


def make_scheduler(s: Scheduler, epochs: int) -> Any:
    return SCHEDULERS[s.type](s, epochs)
