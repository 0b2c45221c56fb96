"""BatchNorm as the seed writes it, checked against the layers our trainables build.

The seed: x_hat = (x - mu) / sqrt(sigma^2 + eps), y = gamma * x_hat + beta, with mu and sigma^2 the
batch mean and (biased) variance in training; at test time running averages
mu_run = alpha * mu_run + (1 - alpha) * mu_batch. PyTorch's ``momentum`` m is the weight of the
*new* batch: running = (1 - m) * running + m * batch, so m = 1 - alpha (alpha = 0.9 <=> m = 0.1),
and PyTorch stores the *unbiased* batch variance in the running average.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.config import MLPConfig
from trainables.engine.models import build_mlp


def _bn_layers(model: nn.Module) -> list[nn.BatchNorm1d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]


def test_training_mode_output_follows_the_seed_formula() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5, eps=1e-3, momentum=0.2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0, 3.0]))  # gamma
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5, 2.0]))  # beta
    x = torch.randn(32, 5) * 3 + 7
    y = bn.train()(x)
    mu = x.mean(0)
    var = ((x - mu) ** 2).mean(0)  # the seed's 1/m variance
    expected = (x - mu) / torch.sqrt(var + 1e-3) * bn.weight + bn.bias
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_running_statistics_follow_the_momentum_rule() -> None:
    torch.manual_seed(1)
    m = 0.2
    alpha = 1 - m  # the seed's alpha
    bn = nn.BatchNorm1d(4, momentum=m)
    mu_run, var_run = bn.running_mean.clone(), bn.running_var.clone()  # 0 and 1
    for _ in range(3):
        x = torch.randn(16, 4) * 2 + 5
        bn.train()(x)
        mu_run = alpha * mu_run + (1 - alpha) * x.mean(0)
        var_run = alpha * var_run + (1 - alpha) * x.var(0, unbiased=True)
    torch.testing.assert_close(bn.running_mean, mu_run)
    torch.testing.assert_close(bn.running_var, var_run)


def test_eval_mode_normalizes_a_batch_of_one_with_running_statistics() -> None:
    torch.manual_seed(2)
    bn = nn.BatchNorm1d(3, eps=1e-5)
    for _ in range(5):
        bn.train()(torch.randn(64, 3) * 4 - 2)
    x = torch.randn(1, 3)
    y = bn.eval()(x)
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + 1e-5) * bn.weight + bn.bias
    torch.testing.assert_close(y, expected)
    # in training mode a batch of one cannot be normalized at all: that is why eval mode exists
    try:
        bn.train()(x)
    except ValueError as exc:
        assert "more than 1 value per channel" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("BatchNorm accepted a batch of one in training mode")


def test_mlp_places_bn_before_or_after_the_activation_and_before_the_softmax() -> None:
    def kinds(**kw: object) -> list[str]:
        model = build_mlp(MLPConfig.model_validate({"depth": 1, "width": 8, **kw}), (1, 6), 3)
        return [type(m).__name__ for m in model]

    assert kinds(bn_placement="before_activation") == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert kinds(bn_placement="after_activation") == ["Flatten", "Linear", "ReLU", "BatchNorm1d", "Linear"]
    assert kinds(bn_placement="none") == ["Flatten", "Linear", "ReLU", "Linear"]
    assert kinds(bn_placement="none", bn_before_softmax=True)[-2:] == ["Linear", "BatchNorm1d"]
    # a bias just before BN is cancelled by the mean subtraction, so the layer has none
    model = build_mlp(MLPConfig.model_validate({"depth": 1, "width": 8}), (1, 6), 3)
    assert model[1].bias is None
    bn = _bn_layers(build_mlp(MLPConfig.model_validate({"bn_momentum": 0.05, "bn_eps": 1e-3}), (1, 6), 3))
    assert bn and all(b.momentum == 0.05 and b.eps == 1e-3 for b in bn)
