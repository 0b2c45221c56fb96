"""The one translation of a SearchSpace into Optuna terms.

Ray Tune's OptunaSearch accepts a define-by-run function; the service hands it the function
built here and nothing else translates the space.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from search_spaces._model import CategoricalParam, FloatParam, IntParam, SearchSpace


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample one configuration: parents first, conditional parameters only when active."""
    config: dict[str, Any] = {}
    for name in space.order():
        if not space.is_active(name, config):
            continue
        param = space[name]
        if isinstance(param, FloatParam):
            config[name] = trial.suggest_float(name, param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, IntParam):
            config[name] = trial.suggest_int(name, param.low, param.high, log=param.log, step=param.step or 1)
        elif isinstance(param, CategoricalParam):
            config[name] = trial.suggest_categorical(name, param.choices)
        else:  # pragma: no cover - the discriminated union is closed
            raise TypeError(f"{name}: unknown parameter type {type(param).__name__}")
    return config


class _DefineByRun:
    """Picklable (Ray Tune pickles its searcher with the experiment state)."""

    def __init__(self, space: SearchSpace, constants: dict[str, Any]) -> None:
        self.space, self.constants = space, constants

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        suggest(trial, self.space)
        return dict(self.constants)


def define_by_run(
    space: SearchSpace, fixed: Mapping[str, Any] | None = None
) -> Callable[[optuna.Trial], dict[str, Any]]:
    """A define-by-run function for OptunaSearch: samples ``space``, returns ``fixed`` as constants."""
    return _DefineByRun(space, dict(fixed or {}))


def fast_tpe_math() -> bool:
    """Give Optuna's TPE SciPy's vectorized ``log_ndtr``; returns whether it is in use.

    TPE evaluates log Φ (the mass of each truncated Gaussian kernel) through ``np.frompyfunc`` over
    a pure-Python function, once per kernel, parameter and candidate: at 1,000 trials that is
    most of a suggestion. SciPy's ``log_ndtr`` computes the same function in C (Optuna's is a port
    of it; tests/search_spaces/test_optuna_math.py checks that values and seeded suggestions agree).
    It halves TPE's time per suggestion at 1,000 trials (docs/benchmarks.md §5). Optuna keeps the
    function private, so this checks that it is still there and leaves Optuna alone otherwise.
    """
    try:
        import scipy.special  # noqa: F401
        from optuna.samplers._tpe import _truncnorm
    except ImportError:  # pragma: no cover - Optuna moved it, or no SciPy: Optuna's own is used
        return False
    current = getattr(_truncnorm, "_log_ndtr", None)
    if current is _scipy_log_ndtr:
        return True
    if not callable(current):  # pragma: no cover
        return False
    global _optuna_log_ndtr
    _optuna_log_ndtr = current
    _truncnorm._log_ndtr = _scipy_log_ndtr
    return True


_optuna_log_ndtr: Callable[[Any], Any] | None = None  # Optuna's own, kept for tests and the benchmark


def _scipy_log_ndtr(a: Any) -> Any:
    import numpy as np
    import scipy.special

    return scipy.special.log_ndtr(np.asarray(a, dtype=float))


def make_sampler(kind: str, space: SearchSpace, seed: int | None, *, max_grid_points: int) -> optuna.samplers.BaseSampler:
    """Build the Optuna sampler named ``kind`` (tpe, random, grid, cmaes, qmc, gp), seeded."""
    samplers = optuna.samplers
    if kind == "tpe":
        fast_tpe_math()
        # multivariate + group model the conditional structure instead of treating parameters as
        # independent; constant_liar keeps parallel workers from sampling the same point.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if kind == "random":
        return samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return samplers.GridSampler(space.grid(max_grid_points), seed=seed)
    if kind == "cmaes":
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if kind == "qmc":
        return samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if kind == "gp":
        return samplers.GPSampler(seed=seed)
    raise ValueError(f"unknown sampler '{kind}' (expected one of {', '.join(SAMPLERS)})")


SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc", "gp")
