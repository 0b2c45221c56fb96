"""A study's driver: the Ray job ``python -m service.runner STUDY_ID`` (see ``__main__``)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any


def lower_priority(nice: int) -> None:
    """Run this driver ``nice`` steps nicer: under CPU contention (many studies' drivers on one
    head node) Ray's GCS, the Jobs API, the store and Caviar's API keep answering
    (bench/control_plane.py: docs/scaling.md). Trials run in Ray's worker processes, unaffected."""
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)


def nicer_process(nice: int) -> None:
    """Set every thread of this process to niceness ``nice`` at least (Linux keeps a niceness per
    thread; elsewhere the process's). Never raises a priority back: only root may."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tasks = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    for tid in tasks:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:  # a thread that ended meanwhile
            pass


def at_niceness(train: Callable[[dict[str, Any]], Any], nice: int) -> Callable[[dict[str, Any]], Any]:
    """The trainable, run by trial processes at CPU niceness ``nice`` (``CAVIAR_TRIAL_NICE``): on a
    node the trials saturate, the API, the database, Ray's GCS and raylet and the study's driver
    (reporting, sampling, scheduling) get the CPU first when they need it, and the trials get all of
    it otherwise. Nothing changes where the CPU is free (bench/api_load: docs/benchmarks.md §4)."""
    if nice <= 0:
        return train

    @functools.wraps(train)
    def trial(config: dict[str, Any]) -> Any:
        nicer_process(nice)  # each trial: a reused trial process runs each in a new thread
        return train(config)

    return trial
