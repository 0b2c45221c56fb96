"""Softmax regression by full-batch gradient descent in NumPy, reporting macro F1 each epoch."""

from __future__ import annotations

from typing import Any

import numpy as np

from caviar_f1_plugin import SoftmaxConfig
from trainables.datasets import load_dataset
from trainables.report import get_reporter


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    scores = []
    for c in range(n_classes):
        tp = float(np.sum((pred == c) & (y == c)))
        fp = float(np.sum((pred == c) & (y != c)))
        fn = float(np.sum((pred != c) & (y == c)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def softmax_f1(config: dict[str, Any]) -> None:
    cfg = SoftmaxConfig.model_validate(config)
    data = load_dataset(cfg.dataset)
    rng = np.random.default_rng(cfg.seed)
    w = rng.normal(0, 0.01, (data.x_train.shape[1], data.n_classes))
    onehot = np.eye(data.n_classes)[data.y_train]
    reporter = get_reporter()
    for epoch in range(1, cfg.epochs + 1):
        p = _softmax(data.x_train @ w)
        loss = float(-np.mean(np.log(p[np.arange(len(p)), data.y_train] + 1e-12)))
        w -= cfg.lr * (data.x_train.T @ (p - onehot) / len(p) + cfg.l2 * w)
        pred = (data.x_val @ w).argmax(axis=1)
        reporter.report({"epoch": epoch, "train_loss": loss, "val_accuracy": float(np.mean(pred == data.y_val)),
                         "val_f1": macro_f1(data.y_val, pred, data.n_classes)})
