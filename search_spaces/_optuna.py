"""The one translation of a SearchSpace into Optuna terms, and the samplers by name.

A parameter becomes an Optuna distribution in one place (each parameter's ``distribution()``);
``suggest`` asks the trial for a value of that distribution. Ray Tune's OptunaSearch accepts a
define-by-run function; the service hands it the function built here and nothing else
translates the space. Samplers are a registry: ``SAMPLERS`` is the one list of names, and each
entry builds its sampler.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers._tpe.sampler import _split_trials
from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace

from search_spaces._model import SearchSpace


def suggest_value(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask ``trial`` for a value of ``dist`` through Optuna's public suggest API."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    raise TypeError(f"{name}: no suggest for {type(dist).__name__}")  # pragma: no cover - the union is closed


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample one configuration: parents first, conditional parameters only when active."""
    config: dict[str, Any] = {}
    for name in space.order():
        if space.is_active(name, config):
            config[name] = suggest_value(trial, name, space[name].distribution())
    return config


class _DefineByRun:
    """Picklable (Ray Tune pickles its searcher with the experiment state)."""

    def __init__(self, space: SearchSpace, constants: dict[str, Any]) -> None:
        self.space, self.constants = space, constants

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        suggest(trial, self.space)
        return dict(self.constants)


def define_by_run(space: SearchSpace, fixed: Mapping[str, Any] | None = None) -> Callable[[optuna.Trial], dict[str, Any]]:
    """A define-by-run function for OptunaSearch: samples ``space``, returns ``fixed`` as constants."""
    return _DefineByRun(space, dict(fixed or {}))


# -- TPE with SciPy's log_ndtr, scoped to the sampler's own calls ----------------------------------

_patch_lock = threading.Lock()
_patch_depth = 0


def _scipy_log_ndtr(a: Any) -> Any:
    import numpy as np
    import scipy.special

    return scipy.special.log_ndtr(np.asarray(a, dtype=float))


@contextlib.contextmanager
def scipy_log_ndtr() -> Iterator[bool]:
    """While inside, Optuna's TPE computes log Φ with SciPy's vectorized ``log_ndtr``; yields whether it does.

    TPE evaluates log Φ (the mass of each truncated Gaussian kernel) through ``np.frompyfunc`` over
    a pure-Python function, once per kernel, parameter and candidate: at 1,000 trials that is most
    of a suggestion. SciPy's ``log_ndtr`` computes the same function in C (Optuna's is a port of
    it; tests/search_spaces/test_optuna_math.py checks that values and seeded suggestions agree).
    Optuna keeps the function private: where it has moved, Optuna's own is used. Nested and
    concurrent uses share one swap, and Optuna's own is back once the last one leaves.
    """
    global _patch_depth
    try:
        from optuna.samplers._tpe import _truncnorm
    except ImportError:  # pragma: no cover - Optuna moved it
        yield False
        return
    if not callable(getattr(_truncnorm, "_log_ndtr", None)):  # pragma: no cover
        yield False
        return
    with _patch_lock:
        if _patch_depth == 0:
            _scipy_log_ndtr.optuna_own = _truncnorm._log_ndtr  # type: ignore[attr-defined]
            _truncnorm._log_ndtr = _scipy_log_ndtr
        _patch_depth += 1
    try:
        yield True
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                _truncnorm._log_ndtr = _scipy_log_ndtr.optuna_own  # type: ignore[attr-defined]


_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class RecentAndBest:
    """A study as TPE reads it, with a bounded history: past ``limit`` finished trials, the ``best``
    best ones (as TPE ranks them: completed by value, then stopped ones by depth and value) and the
    most recent others up to ``limit``, plus every running one (constant liar), in trial order.
    TPE's "below" group is its best 10%, at most 25 trials: with ``best`` >= 25 and ``limit`` >= 250
    it is the same trials as with the whole history; what the bound thins is the "above" group's
    oldest trials, which Optuna's own weights already discount. Everything else is the study's own.
    Single objective only (with several, "best" is a front: the whole history is used)."""

    def __init__(self, study: optuna.Study, limit: int, best: int) -> None:
        self._study, self._limit, self._best = study, limit, best
        self._seen: dict[Any, list[optuna.trial.FrozenTrial]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[optuna.trial.FrozenTrial]:
        trials: list[optuna.trial.FrozenTrial] = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        key = (tuple(states) if states is not None else None, len(trials), trials[-1].number if trials else -1)
        if key not in self._seen:  # TPE reads the trials once or twice per parameter group: select once
            self._seen[key] = self._select(trials)
        return self._seen[key]

    def _select(self, trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        finished = [t for t in trials if t.state in _FINISHED]
        if len(finished) <= self._limit:
            return trials
        # the best as TPE itself ranks them: completed by value, then stopped ones by the deepest
        # step reached and the value there (with ASHA most trials are stopped, PRUNED in Optuna)
        best, _ = _split_trials(self._study, finished, self._best)
        keep = {t.number for t in best}
        for t in reversed(finished):
            if len(keep) >= self._limit:
                break
            keep.add(t.number)
        return [t for t in trials if t.number in keep or t.state not in _FINISHED]


_OBSERVED = (*_FINISHED, optuna.trial.TrialState.RUNNING)


class HighestRung:
    """A study as multi-fidelity TPE reads it: BOHB's rule (Falkner et al., 2018) on Optuna's trials.

    The fidelity is the highest step (epoch; the runner reports each trial's value at every ASHA
    rung) at which at least ``enough`` trials, finished or running, have a value. Every trial with
    a value there is an observation at that fidelity: COMPLETE with that value, whether ASHA later
    stopped it, it is still running, or it finished. The others stay as they are: stopped below it
    (PRUNED, which TPE ranks after, deepest and best first) or running below it (RUNNING, the
    constant liar). Plain TPE ranks every finished trial above every stopped one, so one that ASHA
    let through early, while its rungs were nearly empty, counts as good however poor its values,
    and a running trial that is best at the highest rung counts as bad (a liar) until it finishes.
    With no step that ``enough`` trials reached (or several objectives), the study is unchanged.
    """

    def __init__(self, study: optuna.Study, enough: int) -> None:
        self._study, self._enough = study, enough
        self._seen: dict[Any, list[optuna.trial.FrozenTrial]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def fidelity(self, trials: Sequence[optuna.trial.FrozenTrial]) -> int | None:
        """The highest step at which at least ``enough`` of ``trials`` have a value (None: none)."""
        counts: dict[int, int] = {}
        for t in trials:
            for step, value in t.intermediate_values.items():
                if value == value:  # not NaN
                    counts[step] = counts.get(step, 0) + 1
        return max((step for step, n in counts.items() if n >= self._enough), default=None)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[optuna.trial.FrozenTrial]:
        key = tuple(states) if states is not None else None
        if key not in self._seen:  # a view lives for one suggestion: TPE reads the trials once or twice per group
            trials = self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache)
            wanted = set(states) if states is not None else None
            self._seen[key] = [t for t in self._at_fidelity(trials) if wanted is None or t.state in wanted]
        return self._seen[key]

    def _at_fidelity(self, trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        observed = [t for t in trials if t.state in _OBSERVED]  # not failed, not waiting
        step = None if self._study._is_multi_objective() else self.fidelity(observed)
        if step is None:
            return trials
        seen = []
        for t in trials:
            value = t.intermediate_values.get(step) if t.state in _OBSERVED else None
            if value is not None and value == value:
                t = copy.copy(t)  # the study's own trial is left as it is
                t.state, t.values = optuna.trial.TrialState.COMPLETE, [value]
            seen.append(t)
        return seen


class IncrementalGroups(_GroupDecomposedSearchSpace):
    """Optuna's group decomposition of the search space (TPE's ``group=True``), fed each finished
    trial once. Optuna's own adds every trial again on every suggestion, a cost that grows with the
    study (half of a suggestion at 5,000 trials). Adding a trial again changes nothing, its
    parameters being a union of groups already, nor the groups' order, so the groups are the same."""

    def __init__(self, include_pruned: bool = False) -> None:
        super().__init__(include_pruned)
        self._added: set[int] = set()

    def calculate(self, study: optuna.Study, use_cache: bool = False) -> Any:
        if self._study_id is None:
            self._study_id = study._study_id
        elif self._study_id != study._study_id:
            raise ValueError("`_GroupDecomposedSearchSpace` cannot handle multiple studies.")
        states = _FINISHED if self._include_pruned else (optuna.trial.TrialState.COMPLETE,)
        for trial in study._get_trials(deepcopy=False, states=states, use_cache=use_cache):
            if trial.number not in self._added:
                self._search_space.add_distributions(trial.distributions)
                self._added.add(trial.number)
        return copy.deepcopy(self._search_space)


class FastTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPESampler, with SciPy's ``log_ndtr`` in its maths during its own sampling calls
    only (about half the time per suggestion at 1,000 trials; docs/benchmarks.md §5), the search
    space's groups updated with new trials only (``IncrementalGroups``), and with
    ``max_history`` a bounded history past that many finished trials (``RecentAndBest``: a
    suggestion's cost stops growing with the study). Same suggestions as TPESampler for the same
    seed while the study has at most ``max_history`` finished trials. With ``rung_enough``, TPE
    judges trials at the highest rung that many reached (``HighestRung``): multi-fidelity TPE."""

    # class defaults: a sampler pickled (by Tune, with a study's state) before the bound existed resumes unbounded
    _max_history: int | None = None
    _keep_best: int = 100
    _rung_enough: int | None = None

    def __init__(self, *args: Any, max_history: int | None = None, keep_best: int = 100, rung_enough: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if max_history is not None and not (25 <= keep_best < max_history and max_history >= 250):
            # TPE's "below" group is min(ceil(n / 10), 25) trials: 25 once it models 250 or more
            raise ValueError(f"keep_best must be at least 25 (TPE's largest 'below' group) and below max_history, "
                             f"and max_history at least 250: {keep_best}, {max_history}")
        if rung_enough is not None and rung_enough < 2:
            raise ValueError(f"rung_enough must be at least 2: {rung_enough}")
        self._max_history, self._keep_best, self._rung_enough = max_history, keep_best, rung_enough
        if self._group_decomposed_search_space is not None:
            self._group_decomposed_search_space = IncrementalGroups(self._group_decomposed_search_space._include_pruned)

    def _view(self, study: optuna.Study) -> Any:
        if self._rung_enough is not None:
            study = HighestRung(study, self._rung_enough)  # type: ignore[assignment]
        if self._max_history is None or study._is_multi_objective():
            return study
        return RecentAndBest(study, self._max_history, self._keep_best)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        with scipy_log_ndtr():
            return super().sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        with scipy_log_ndtr():
            return super().sample_independent(self._view(study), trial, param_name, param_distribution)


class _PicklableLock:
    """Optuna's genetic samplers hold a thread lock, which does not pickle; Ray Tune pickles the
    searcher (and its sampler) with the experiment state. The lock is made anew when unpickled."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _thread_lock=threading.Lock())


class NSGAIISampler(_PicklableLock, optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable."""


class NSGAIIISampler(_PicklableLock, optuna.samplers.NSGAIIISampler):
    """Optuna's NSGA-III, picklable."""


# -- the registry -----------------------------------------------------------------------------------

SamplerBuilder = Callable[[SearchSpace, "int | None", int], optuna.samplers.BaseSampler]


# TPE's history past 1,000 finished trials: the best 100 and the most recent 900 (docs/benchmarks.md §5)
TPE_HISTORY, TPE_KEEP_BEST = 1000, 100


# the samplers built on TPE, each with the number of trials at a rung that makes it TPE's fidelity
# (None: plain TPE; mf_tpe: multi-fidelity TPE, BOHB's rule on ASHA's rungs, running trials included),
# and the options a definition may set on them (None: Caviar's default)
TPE_SAMPLERS: dict[str, int | None] = {"tpe": None, "mf_tpe": 10}
TPE_OPTIONS = ("multivariate", "group", "constant_liar")


def _tpe(seed: int | None, rung_enough: int | None = None, *,
         multivariate: bool = True, group: bool = True, constant_liar: bool = True) -> optuna.samplers.BaseSampler:
    # multivariate + group model the conditional structure instead of treating parameters as
    # independent; constant_liar keeps parallel workers from sampling the same point. Optuna 5's
    # TPESampler defaults differ in group only (off: the parameters not in every trial are sampled
    # each on its own); a definition may set each
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return FastTPESampler(seed=seed, multivariate=multivariate, group=group and multivariate, constant_liar=constant_liar,
                              max_history=TPE_HISTORY, keep_best=TPE_KEEP_BEST, rung_enough=rung_enough)


def _tpe_builder(rung_enough: int | None) -> SamplerBuilder:
    return lambda space, seed, _: _tpe(seed, rung_enough)


def _experimental(cls: Any, seed: int | None) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(seed=seed)  # type: ignore[no-any-return]


SAMPLERS: dict[str, SamplerBuilder] = {
    **{kind: _tpe_builder(enough) for kind, enough in TPE_SAMPLERS.items()},
    "random": lambda space, seed, _: optuna.samplers.RandomSampler(seed=seed),
    "grid": lambda space, seed, max_points: optuna.samplers.GridSampler(space.grid(max_points), seed=seed),
    "cmaes": lambda space, seed, _: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    "qmc": lambda space, seed, _: optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False),
    "gp": lambda space, seed, _: optuna.samplers.GPSampler(seed=seed),
    # evolutionary, for several objectives (Optuna's defaults: generations of 50; a study smaller
    # than one generation samples at random)
    "nsga2": lambda space, seed, _: NSGAIISampler(seed=seed),
    "nsga3": lambda space, seed, _: _experimental(NSGAIIISampler, seed),
}


def make_sampler(kind: str, space: SearchSpace, seed: int | None, *, max_grid_points: int,
                 options: dict[str, bool | None] | None = None) -> optuna.samplers.BaseSampler:
    """Build the Optuna sampler named ``kind`` (one of ``SAMPLERS``), seeded; ``options`` (one of
    ``TPE_OPTIONS`` each, None for the default) for the TPE samplers only."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler '{kind}' (expected one of {', '.join(SAMPLERS)})")
    chosen = {k: v for k, v in (options or {}).items() if v is not None}
    if kind in TPE_SAMPLERS and not set(chosen) - set(TPE_OPTIONS):
        return _tpe(seed, TPE_SAMPLERS[kind], **chosen)
    if chosen:
        raise ValueError(f"options {sorted(chosen)} apply to samplers {', '.join(TPE_SAMPLERS)} only "
                         f"({', '.join(TPE_OPTIONS)}), not '{kind}'")
    return SAMPLERS[kind](space, seed, max_grid_points)


# Optuna's default forest (64 trees of depth up to 64) marginalizes in pure Python: 7 s at 200 trials,
# 40 s at 1,000, 3 min at 3,000 on one core. Depth 8 bounds each tree to 256 leaves: about 4 s
# however many trials (the ranking on a real study is the same as the default's, tests/search_spaces)
FANOVA_TREES, FANOVA_DEPTH = 64, 8
IMPORTANCE_EVALUATOR = f"fANOVA (optuna.importance.FanovaImportanceEvaluator, n_trees={FANOVA_TREES}, max_depth={FANOVA_DEPTH}, seed 0)"


def importance(space: SearchSpace, trials: Sequence[tuple[Mapping[str, Any], float]], mode: str) -> dict[str, float]:
    """Which hyperparameters matter: Optuna's fANOVA over ``trials`` (configuration, objective value),
    most important first; importances sum to 1. Parameters not in every trial (conditional ones) are
    left out, as Optuna does. Needs at least two trials."""
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    dists = space.distributions()
    for config, value in trials:
        params = {k: v for k, v in config.items() if k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params}, value=float(value)))
    found = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(
        n_trees=FANOVA_TREES, max_depth=FANOVA_DEPTH, seed=0))
    return {k: float(v) for k, v in found.items()}
