"""Caviar gives Optuna's TPE SciPy's log_ndtr (search_spaces.fast_tpe_math): same values, same suggestions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import optuna
from optuna.samplers._tpe import _truncnorm

from search_spaces import _optuna as caviar_optuna
from search_spaces import make_sampler, resolve_space, suggest


def test_scipy_log_ndtr_matches_optunas_own_including_the_tails() -> None:
    assert caviar_optuna.fast_tpe_math()
    assert _truncnorm._log_ndtr is caviar_optuna._scipy_log_ndtr
    assert caviar_optuna.fast_tpe_math()  # idempotent: Optuna's own is kept, not replaced by ours
    ours, theirs = caviar_optuna._scipy_log_ndtr, caviar_optuna._optuna_log_ndtr
    assert theirs is not None and theirs is not ours
    a = np.concatenate([np.linspace(-40, 40, 4001), [-1e3, -37.5, -20.0001, -19.9999, 5.9999, 6.0001, 1e3]])
    # atol: right of a = 6 Optuna returns -Φ(-a) for log(1 - Φ(-a)), which is off by Φ(-a)²/2 < 1e-15
    np.testing.assert_allclose(ours(a), theirs(a), rtol=1e-9, atol=1e-15)
    assert ours(np.array([0.0]))[0] == math.log(0.5)


def _suggestions(n: int) -> list[dict[str, object]]:
    space = resolve_space(["seven_key", "batchnorm"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=3, multivariate=True, group=True, constant_liar=True, n_startup_trials=5)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    out = []
    for _ in range(n):
        trial = study.ask()
        params = suggest(trial, space)
        out.append(params)
        study.tell(trial, -abs(math.log10(float(params["lr"])) + 2.5) - float(params["dropout"]))
    return out


def test_seeded_tpe_suggests_the_same_configurations_with_either_log_ndtr() -> None:
    make_sampler("tpe", resolve_space(["seven_key"]), 0, max_grid_points=10)  # installs SciPy's
    fast = _suggestions(25)
    original = caviar_optuna._optuna_log_ndtr
    assert original is not None
    _truncnorm._log_ndtr = original
    try:
        slow = _suggestions(25)
    finally:
        caviar_optuna.fast_tpe_math()
    assert _truncnorm._log_ndtr is caviar_optuna._scipy_log_ndtr
    assert len(fast) == len(slow)
    for f, s in zip(fast, slow, strict=True):
        assert f.keys() == s.keys()
        for k in f:
            if isinstance(f[k], float):
                assert math.isclose(f[k], s[k], rel_tol=1e-9), (k, f[k], s[k])  # type: ignore[arg-type]
            else:
                assert f[k] == s[k], (k, f[k], s[k])
