"""The networks: BatchNorm MLP and CNN ending in a softmax classifier (logits; the loss applies softmax)."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.config import CNNConfig, MLPConfig, TrainConfig


def _bn(kind: str, features: int, cfg: TrainConfig) -> nn.Module:
    cls = {"1d": nn.BatchNorm1d, "2d": nn.BatchNorm2d}[kind]
    return cls(features, eps=cfg.bn_eps, momentum=cfg.bn_momentum)


def _block(linear: nn.Module, features: int, kind: str, cfg: TrainConfig) -> list[nn.Module]:
    """linear -> [BN] -> ReLU -> [BN], by ``bn_placement``."""
    layers = [linear]
    if cfg.bn_placement == "before_activation":
        layers.append(_bn(kind, features, cfg))
    layers.append(nn.ReLU())
    if cfg.bn_placement == "after_activation":
        layers.append(_bn(kind, features, cfg))
    return layers


def _head(in_features: int, n_classes: int, cfg: TrainConfig) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(in_features, n_classes)]
    if cfg.bn_before_softmax:  # the seed's tip: normalize the logits z[L] before the softmax
        layers.append(_bn("1d", n_classes, cfg))
    return layers


def build_mlp(cfg: MLPConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    d_in = math.prod(input_shape)
    # a bias right before BN is cancelled by the mean subtraction (the seed's note on b[l])
    bias = cfg.bn_placement != "before_activation"
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(cfg.depth):
        layers += _block(nn.Linear(d_in, cfg.width, bias=bias), cfg.width, "1d", cfg)
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        d_in = cfg.width
    layers += _head(d_in, n_classes, cfg)
    return nn.Sequential(*layers)


def build_cnn(cfg: CNNConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Conv blocks (same padding, max-pool by 2 while the signal is long enough), then a linear head.

    ``input_shape`` is (C, L) for 1-D signals and (C, H, W) for images.
    """
    two_d = len(input_shape) == 3
    conv, pool, kind = (nn.Conv2d, nn.MaxPool2d, "2d") if two_d else (nn.Conv1d, nn.MaxPool1d, "1d")
    channels, size = input_shape[0], list(input_shape[1:])
    bias = cfg.bn_placement != "before_activation"
    layers: list[nn.Module] = [nn.Unflatten(1, tuple(input_shape))]
    for _ in range(cfg.depth):
        k = min(cfg.kernel_size, min(size)) | 1  # odd, no larger than the signal
        layers += _block(conv(channels, cfg.channels, k, padding=k // 2, bias=bias), cfg.channels, kind, cfg)
        channels = cfg.channels
        if min(size) >= 2:
            layers.append(pool(2))
            size = [s // 2 for s in size]
    layers.append(nn.Flatten())
    if cfg.dropout > 0:
        layers.append(nn.Dropout(cfg.dropout))
    layers += _head(channels * math.prod(size), n_classes, cfg)
    return nn.Sequential(*layers)


def init_weights(model: nn.Module, scheme: str) -> None:
    """The seed's weight-initialization choices; biases start at zero, BN at gamma=1, beta=0."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if scheme == "xavier_uniform":
                nn.init.xavier_uniform_(m.weight)
            elif scheme == "xavier_normal":
                nn.init.xavier_normal_(m.weight)
            elif scheme == "kaiming_normal":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif scheme == "normal":
                nn.init.normal_(m.weight, std=0.01)
            else:  # pragma: no cover - guarded by the config model
                raise ValueError(f"weight_init: unknown scheme '{scheme}'")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices and kernels (not biases, not BN's gamma/beta)."""
    terms = [m.weight.abs().sum() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    return torch.stack(terms).sum()
