"""``sleep_work``: ``busy_work``'s epochs and checkpoints, sleeping instead of spinning the CPU, and
holding between epochs while a file exists.

The multi-host test runs a head, three workers, their 4 concurrent trials, the API and PostgreSQL
on a 2-core machine: trials that spin would starve the Ray processes the test watches (a joining
worker took 20+ s to start its first trial process). The hold file is the test's barrier: while it
exists no trial gets past its current epoch, so a busy worker frees no CPU, and trials that wait
for CPUs can only go to a worker that joins. A plug-in, found through its entry point on the
PYTHONPATH the test gives the API and the Ray nodes, as a user's package would be.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trainables import TrainableSpec
from trainables.datasets import DatasetSpec, DigitsSpec
from trainables.report import get_reporter


class SleepWorkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: DatasetSpec = Field(default_factory=lambda: DigitsSpec(name="digits"), description="Unused: reads no data.")
    epochs: int = Field(10, ge=1, le=1000)
    seconds_per_epoch: float = Field(1.0, ge=0.0, le=60.0)
    x: float = Field(0.5, ge=0.0, le=1.0)
    y: float = Field(0.5, ge=0.0, le=1.0)
    hold: str = Field("", description="A path: while it exists, epochs after the first wait before they start.")


def sleep_work(config: dict[str, Any]) -> None:
    """Sleeps ``seconds_per_epoch`` per epoch, checkpoints every epoch and resumes from the last
    checkpoint; the score is busy_work's (best at x=0.3, y=0.7). Epochs after the first wait while
    the ``hold`` file exists."""
    cfg = SleepWorkConfig.model_validate(config)
    reporter = get_reporter()
    state = reporter.restore()
    start = int(state["epoch"]) if state else 0
    score = 1.0 - (cfg.x - 0.3) ** 2 - (cfg.y - 0.7) ** 2
    for epoch in range(start + 1, cfg.epochs + 1):
        while epoch > 1 and cfg.hold and os.path.exists(cfg.hold):
            time.sleep(0.05)
        time.sleep(cfg.seconds_per_epoch)
        value = score * (1.0 - 0.5 ** epoch)
        reporter.report({"epoch": epoch, "train_loss": 1.0 - value, "val_loss": 1.0 - value, "val_accuracy": value}, {"epoch": epoch})


SPEC = TrainableSpec("sleep_work", sleep_work, SleepWorkConfig, ("train_loss", "val_loss", "val_accuracy"),
                     "For the multi-host test: busy_work's epochs and checkpoints, sleeping instead of spinning; holds while a file exists.")
