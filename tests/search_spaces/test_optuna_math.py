"""FastTPESampler: Optuna's TPE with SciPy's log_ndtr, scoped to its own calls: same values, same
suggestions, and Optuna's own function everywhere else."""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.samplers._tpe import _truncnorm

from search_spaces import FastTPESampler, make_sampler, resolve_space, scipy_log_ndtr, suggest
from search_spaces._optuna import _scipy_log_ndtr


def test_scipy_log_ndtr_matches_optunas_own_including_the_tails() -> None:
    theirs = _truncnorm._log_ndtr
    with scipy_log_ndtr() as swapped:
        assert swapped and _truncnorm._log_ndtr is _scipy_log_ndtr
        with scipy_log_ndtr():  # nested: one swap
            assert _truncnorm._log_ndtr is _scipy_log_ndtr
        assert _truncnorm._log_ndtr is _scipy_log_ndtr
    assert _truncnorm._log_ndtr is theirs  # Optuna's own is back outside
    a = np.concatenate([np.linspace(-40, 40, 4001), [-1e3, -37.5, -20.0001, -19.9999, 5.9999, 6.0001, 1e3]])
    # atol: right of a = 6 Optuna returns -Φ(-a) for log(1 - Φ(-a)), which is off by Φ(-a)²/2 < 1e-15
    np.testing.assert_allclose(_scipy_log_ndtr(a), theirs(a), rtol=1e-9, atol=1e-15)
    assert _scipy_log_ndtr(np.array([0.0]))[0] == math.log(0.5)


def _suggestions(sampler_class: type[optuna.samplers.TPESampler], n: int) -> list[dict[str, Any]]:
    space = resolve_space(["seven_key", "batchnorm"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = sampler_class(seed=3, multivariate=True, group=True, constant_liar=True, n_startup_trials=5)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    out = []
    for _ in range(n):
        trial = study.ask()
        params = suggest(trial, space)
        out.append(params)
        study.tell(trial, -abs(math.log10(float(params["lr"])) + 2.5) - float(params["dropout"]))
    return out


def test_fast_tpe_suggests_what_optunas_tpe_suggests_and_patches_nothing_beyond_its_calls() -> None:
    original = _truncnorm._log_ndtr
    fast = _suggestions(FastTPESampler, 25)
    assert _truncnorm._log_ndtr is original  # nothing process-wide is left behind
    slow = _suggestions(optuna.samplers.TPESampler, 25)
    assert len(fast) == len(slow)
    for f, s in zip(fast, slow, strict=True):
        assert f.keys() == s.keys()
        for k in f:
            if isinstance(f[k], float):
                assert math.isclose(f[k], s[k], rel_tol=1e-9), (k, f[k], s[k])
            else:
                assert f[k] == s[k], k
    assert isinstance(make_sampler("tpe", resolve_space(["seven_key"]), 0, max_grid_points=10), FastTPESampler)


def test_the_swap_is_in_place_during_sampling_and_survives_concurrent_samplers() -> None:
    during: list[bool] = []

    class Probe(FastTPESampler):
        def sample_independent(self, *args: Any) -> Any:
            with scipy_log_ndtr():
                during.append(_truncnorm._log_ndtr is _scipy_log_ndtr)
            return super().sample_independent(*args)

    space = resolve_space({"x": {"type": "float", "low": 0.0, "high": 1.0}})

    def run() -> None:
        study = optuna.create_study(sampler=Probe(seed=0, n_startup_trials=2))
        study.optimize(lambda t: suggest(t, space)["x"], n_trials=8)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert during and all(during)
    assert _truncnorm._log_ndtr is not _scipy_log_ndtr
