"""A study's driver: the Ray job ``python -m service.runner STUDY_ID`` (see ``__main__``)."""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Callable
from typing import Any


def lower_priority(nice: int) -> None:
    """Run this driver ``nice`` steps nicer: under CPU contention (many studies' drivers on one
    head node) Ray's GCS, the Jobs API, the store and Caviar's API keep answering
    (bench/control_plane.py: docs/scaling.md). Trials run in Ray's worker processes, unaffected."""
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)


def freeze_imports() -> None:
    """Move what this process holds after its imports (Ray, Tune, Optuna, PyTorch, scikit-learn:
    about 370,000 objects) out of the garbage collector's sight, as the API server does with its
    start-up objects. Without it every full collection walks all of them (231 ms measured): in a
    driver, a profile of a study's start put a third of the time before its first trial in
    collections run while the store callback opened a session (docs/benchmarks.md §2)."""
    gc.collect()
    gc.freeze()


def as_trial(train: Callable[[dict[str, Any]], Any], *, ahead: bool) -> Callable[[dict[str, Any]], Any]:
    """The trainable as Caviar's trial processes run it. ``ahead`` (``CAVIAR_REPORT_AHEAD``): a
    trainable that checks ``stopping()`` between batches (the built-in ones) trains its next epoch
    while the driver handles its last report, instead of waiting for it
    (trainables.report.TuneReporter). (Ray already runs trial processes at niceness 15, below its
    own processes, the drivers and the API.)"""
    from trainables.report import allow_reporting_ahead

    @functools.wraps(train)
    def trial(config: dict[str, Any]) -> Any:
        allow_reporting_ahead(ahead)  # each trial: the setting of this study's driver
        return train(config)

    return trial
