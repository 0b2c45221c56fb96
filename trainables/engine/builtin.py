"""The built-in PyTorch trainables: plain functions ``train(config)`` over the shared loop."""

from __future__ import annotations

from typing import Any

from trainables.config import CNNConfig, MLPConfig
from trainables.engine.loop import fit
from trainables.engine.models import build_cnn, build_mlp


def mlp_bn_softmax(config: dict[str, Any]) -> None:
    """A multilayer perceptron with BatchNorm and a softmax classifier."""
    fit(MLPConfig.model_validate(config), build_mlp)


def cnn_bn_softmax(config: dict[str, Any]) -> None:
    """A small BatchNorm CNN for 1-D signals (MNIST-1D) and 8x8 images (digits)."""
    fit(CNNConfig.model_validate(config), build_cnn)
