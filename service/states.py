"""Study and trial states: a module of its own so that the store (and a study's driver) can be
imported without the schemas, which pull in the trainables and with them PyTorch."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FINISHED", "StudyStatus", "TrialState"]


class StudyStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = {StudyStatus.COMPLETED, StudyStatus.FAILED, StudyStatus.CANCELLED}


class TrialState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED_EARLY = "stopped_early"
    FAILED = "failed"
