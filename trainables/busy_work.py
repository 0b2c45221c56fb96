"""``busy_work``: fixed CPU work per epoch and a known optimum, for benchmarks and cluster checks.

Torch-free: it reads no data and builds no model, so it also shows the smallest trainable a plug-in
can be (a function that reports through :mod:`trainables.report`).
"""

from __future__ import annotations

import time
from typing import Any

from trainables.config import BusyWorkConfig
from trainables.report import get_reporter


def busy_work(config: dict[str, Any]) -> None:
    """Spins the CPU ``seconds_per_epoch`` per epoch and reports a score that depends only on ``x``
    and ``y`` (best at x=0.3, y=0.7), rising with epochs like a learning curve."""
    cfg = BusyWorkConfig.model_validate(config)
    reporter = get_reporter(ahead=True)  # it checks stopping() while it spins
    state = reporter.restore()
    start = int(state["epoch"]) if state else 0
    score = 1.0 - (cfg.x - 0.3) ** 2 - (cfg.y - 0.7) ** 2
    for epoch in range(start + 1, cfg.epochs + 1):
        end = time.perf_counter() + cfg.seconds_per_epoch
        while time.perf_counter() < end:
            if reporter.stopping():  # stopped early while it worked ahead: this epoch goes unreported
                return
        value = score * (1.0 - 0.5 ** epoch)
        metrics = {"epoch": epoch, "train_loss": 1.0 - value, "val_loss": 1.0 - value, "val_accuracy": value}
        reporter.report(metrics, {"epoch": epoch} if cfg.checkpoint else None)
