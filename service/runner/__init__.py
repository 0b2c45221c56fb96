"""A study's driver: the Ray job ``python -m service.runner STUDY_ID`` (see ``__main__``)."""

from __future__ import annotations

import os


def lower_priority(nice: int) -> None:
    """Run this driver ``nice`` steps nicer: under CPU contention (many studies' drivers on one
    head node) Ray's GCS, the Jobs API, the store and Caviar's API keep answering
    (bench/control_plane.py: docs/scaling.md). Trials run in Ray's worker processes, unaffected."""
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)
