"""The built-in trainables: plain functions ``train(config)`` that report through ``report.py``."""

from __future__ import annotations

import time
from typing import Any

from trainables.config import BusyWorkConfig, CNNConfig, MLPConfig
from trainables.engine import fit
from trainables.models import build_cnn, build_mlp
from trainables.report import get_reporter


def mlp_bn_softmax(config: dict[str, Any]) -> None:
    """A multilayer perceptron with BatchNorm and a softmax classifier."""
    fit(MLPConfig.model_validate(config), build_mlp)


def cnn_bn_softmax(config: dict[str, Any]) -> None:
    """A small BatchNorm CNN for 1-D signals (MNIST-1D) and 8x8 images (digits)."""
    fit(CNNConfig.model_validate(config), build_cnn)


def busy_work(config: dict[str, Any]) -> None:
    """Fixed work for benchmarks and cluster checks: spins the CPU ``seconds_per_epoch`` per epoch and
    reports a score that depends only on ``x`` and ``y`` (best at x=0.3, y=0.7). No data, no model."""
    cfg = BusyWorkConfig.model_validate(config)
    reporter = get_reporter()
    state = reporter.restore()
    start = int(state["epoch"]) if state else 0
    score = 1.0 - (cfg.x - 0.3) ** 2 - (cfg.y - 0.7) ** 2
    for epoch in range(start + 1, cfg.epochs + 1):
        end = time.perf_counter() + cfg.seconds_per_epoch
        while time.perf_counter() < end:
            pass
        value = score * (1.0 - 0.5 ** epoch)  # rises with epochs like a learning curve
        metrics = {"epoch": epoch, "train_loss": 1.0 - value, "val_loss": 1.0 - value, "val_accuracy": value}
        reporter.report(metrics, {"epoch": epoch} if cfg.checkpoint else None)
