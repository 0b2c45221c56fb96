"""FastTPESampler: Optuna's TPE with SciPy's log_ndtr, scoped to its own calls: same values, same
suggestions, and Optuna's own function everywhere else."""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.samplers._tpe import _truncnorm

from search_spaces import FastTPESampler, make_sampler, resolve_space, scipy_log_ndtr, suggest
from search_spaces._optuna import HighestRung, IncrementalGroups, RecentAndBest, _scipy_log_ndtr


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


# -- the bounded history (RecentAndBest) ---------------------------------------------------------


def _mixed_study(n: int, seed: int = 0) -> optuna.Study:
    """A maximizing study of ``n`` trials: completed with values, pruned with an intermediate value,
    a few failed, and the last three still running."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    for i in range(n):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        if i >= n - 3:
            continue  # running
        kind = rng.choice(["complete", "complete", "pruned", "fail"])
        if kind == "complete":
            study.tell(trial, float(x + rng.normal(0, 0.1)))
        elif kind == "pruned":
            trial.report(float(x), 1)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return study


def test_the_bounded_history_keeps_the_best_the_most_recent_and_the_running() -> None:
    from optuna.samplers._tpe.sampler import _split_trials

    study = _mixed_study(400)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    everything = study._get_trials(deepcopy=False, states=states)
    view = RecentAndBest(study, limit=100, best=30)
    seen = view._get_trials(deepcopy=False, states=states)

    finished = [t for t in everything if t.state != optuna.trial.TrialState.RUNNING]
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    best = {t.number for t in sorted(complete, key=lambda t: -t.value)[:30]}  # type: ignore[operator]
    running = {t.number for t in everything if t.state == optuna.trial.TrialState.RUNNING}
    numbers = [t.number for t in seen]
    assert numbers == sorted(numbers)  # in trial order: Optuna's weights depend on it
    assert len(running) == 3 and running <= set(numbers)
    assert best <= set(numbers)
    assert len([t for t in seen if t.state != optuna.trial.TrialState.RUNNING]) == 100
    recent = [t.number for t in finished if t.number not in best][-(100 - 30):]
    assert set(numbers) == best | running | set(recent)
    # TPE's "below" group (its best, at most 25) is the same trials with the whole history and the view
    below_all, _ = _split_trials(study, everything, 25)
    below_view, _ = _split_trials(view, seen, 25)  # type: ignore[arg-type]
    assert [t.number for t in below_all] == [t.number for t in below_view]
    # within the limit nothing is left out; with several objectives the sampler does not bound at all
    assert RecentAndBest(study, limit=1000, best=30)._get_trials(deepcopy=False, states=states) == everything
    assert FastTPESampler(max_history=250, keep_best=30)._view(optuna.create_study(directions=["maximize", "minimize"])).__class__ is not RecentAndBest


def test_in_a_mostly_stopped_study_the_bound_keeps_the_trials_stopped_deepest() -> None:
    """With ASHA most trials reach Optuna as PRUNED: when fewer than 25 completed, TPE's best are
    the trials stopped at the deepest rung with the best values there, however old."""
    from optuna.samplers._tpe.sampler import _split_trials

    rng = np.random.default_rng(4)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=4))
    for i in range(600):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        depth = 3 if i < 40 else int(rng.choice([1, 1, 1, 2]))  # the deepest-stopped are the oldest
        if i % 60 == 0:
            study.tell(trial, float(x))  # 10 completed trials
            continue
        for step in range(1, depth + 1):
            trial.report(float(x + rng.normal(0, 0.05)), step)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    everything = study._get_trials(deepcopy=False, states=states)
    seen = RecentAndBest(study, limit=250, best=25)._get_trials(deepcopy=False, states=states)
    assert len(seen) == 250
    below_all, _ = _split_trials(study, everything, 25)
    below_view, _ = _split_trials(study, seen, 25)
    assert [t.number for t in below_view] == [t.number for t in below_all]
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in below_all) == 15  # 10 completed, then the deepest stopped


def test_bounded_tpe_suggests_as_before_up_to_its_limit_then_models_at_most_that_many_trials() -> None:
    modelled: list[int] = []

    class Probe(FastTPESampler):
        def _build_parzen_estimator(self, study: Any, search_space: Any, trials: list[Any], handle_below: bool) -> Any:
            if handle_below:
                modelled.append(len(trials))
            else:
                modelled[-1] += len(trials)
            return super()._build_parzen_estimator(study, search_space, trials, handle_below)

    def run(sampler: optuna.samplers.BaseSampler, n: int) -> list[float]:
        study = optuna.create_study(direction="minimize", sampler=sampler)
        out = []
        for _ in range(n):
            trial = study.ask()
            x, y = trial.suggest_float("x", -5, 5), trial.suggest_float("y", -5, 5)
            study.tell(trial, (x - 1) ** 2 + (y + 2) ** 2)
            out += [x, y]
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        bounded = run(Probe(seed=5, multivariate=True, n_startup_trials=10, max_history=250, keep_best=25), 290)
        whole = run(FastTPESampler(seed=5, multivariate=True, n_startup_trials=10), 290)
    assert bounded[:2 * 251] == whole[:2 * 251]  # up to 250 finished trials: the same suggestions
    assert max(modelled) == 250 and modelled[-1] == 250  # past it, the model sees 250 trials, not 289
    with pytest.raises(ValueError, match="keep_best"):
        FastTPESampler(max_history=1000, keep_best=10)
    with pytest.raises(ValueError, match="at least 250"):  # below 250, TPE's below group would shrink
        FastTPESampler(max_history=200, keep_best=25)
    tpe = make_sampler("tpe", resolve_space(["seven_key"]), 0, max_grid_points=10)
    assert isinstance(tpe, FastTPESampler) and (tpe._max_history, tpe._keep_best) == (1000, 100)


def test_incremental_groups_equal_optunas_as_trials_finish_out_of_order() -> None:
    from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace

    space = resolve_space(["seven_key", "batchnorm"])  # conditional parameters: several groups
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    ours, theirs = IncrementalGroups(True), _GroupDecomposedSearchSpace(True)
    rng = np.random.default_rng(1)
    running: list[optuna.trial.Trial] = []
    for _ in range(150):
        trial = study.ask()
        suggest(trial, space)
        running.append(trial)
        while running and rng.random() < 0.6:  # finish a random running one: completion out of order
            done = running.pop(int(rng.integers(len(running))))
            if rng.random() < 0.3:
                study.tell(done, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(done, float(rng.random()))
        a, b = ours.calculate(study).search_spaces, theirs.calculate(study).search_spaces
        assert [sorted(g) for g in a] == [sorted(g) for g in b]  # the same groups, in the same order
    assert len(b) > 1
    assert isinstance(make_sampler("tpe", space, 0, max_grid_points=10)._group_decomposed_search_space, IncrementalGroups)  # type: ignore[attr-defined]


# -- multi-fidelity TPE (HighestRung) ---------------------------------------------------------------

C, P, R = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING


def _asha_like_study(direction: str = "maximize") -> optuna.Study:
    """What ASHA leaves in Optuna early in a study: two poor trials let through to the end while the
    rungs were empty, good ones stopped at epoch 6, one good one still running past epoch 18.
    x is the configuration; the good region is x near 0.8."""
    sign = 1.0 if direction == "maximize" else -1.0
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))

    def add(x: float, curve: dict[int, float], state: optuna.trial.TrialState) -> None:
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        study._storage.set_trial_param(trial._trial_id, "x", x, optuna.distributions.FloatDistribution(0.0, 1.0))
        for step, v in curve.items():
            trial.report(sign * v, step)
        if state == C:
            study.tell(trial, sign * curve[max(curve)])
        elif state == P:
            study.tell(trial, state=P)

    add(0.10, {2: 0.20, 6: 0.22, 18: 0.25, 30: 0.26}, C)  # let through early: completed, poor
    add(0.15, {2: 0.30, 6: 0.35, 18: 0.40, 30: 0.41}, C)
    for i in range(8):
        add(0.75 + 0.01 * i, {2: 0.45, 6: 0.50 + 0.01 * i}, P)  # good, stopped at 6 (the cut rose)
    add(0.30, {2: 0.25}, P)
    add(0.82, {2: 0.46, 6: 0.58, 18: 0.66}, R)  # the best, still running
    return study


def test_highest_rung_judges_every_trial_at_the_highest_epoch_enough_reached() -> None:
    from optuna.samplers._tpe.sampler import _split_trials

    study = _asha_like_study()
    states = (C, P, R)
    plain = study._get_trials(deepcopy=False, states=states)
    view = HighestRung(study, enough=10)
    assert view.fidelity(plain) == 6  # 11 trials have a value at 6, 3 at 18, 2 at 30
    seen = view._get_trials(deepcopy=False, states=states)
    assert [t.number for t in seen] == [t.number for t in plain]  # the same trials, in order
    at6 = {t.number: t.intermediate_values.get(6) for t in plain}
    for t in seen:
        if at6[t.number] is not None:  # finished, stopped or running: an observation at epoch 6
            assert t.state == C and t.value == at6[t.number]
        else:
            assert t.state == P  # stopped at 2: below the fidelity, ranked after by TPE
    assert [t.state for t in study._get_trials(deepcopy=False, states=states)] == [t.state for t in plain]  # the study's own untouched
    # TPE's good group: plain TPE takes the two completed (poor) trials first; the view the best at epoch 6
    below_plain, _ = _split_trials(study, [t for t in plain if t.state != R], 2)
    below_view, _ = _split_trials(view, [t for t in seen if t.state != R], 2)  # type: ignore[arg-type]
    assert sorted(t.number for t in below_plain) == [0, 1]
    assert sorted(t.number for t in below_view) == [9, 11]  # the best stopped at 6 and the running one
    # asked for finished trials only, a running trial observed at the fidelity is among them
    assert 11 in [t.number for t in view._get_trials(deepcopy=False, states=(C, P))]
    # fewer trials than `enough` anywhere, or several objectives: the study as it is
    assert HighestRung(study, enough=50)._get_trials(deepcopy=False, states=states) == plain
    several = optuna.create_study(directions=["maximize", "minimize"])
    several.enqueue_trial({})
    assert HighestRung(several, enough=2)._get_trials(deepcopy=False) == several._get_trials(deepcopy=False)


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_multi_fidelity_tpe_samples_where_trials_are_best_at_the_highest_rung(direction: str) -> None:
    """Plain TPE models the two poor completed trials as the good ones and samples near x = 0.1;
    mf_tpe models the best at epoch 6 and samples near 0.8."""

    def suggestions(sampler: optuna.samplers.BaseSampler) -> list[float]:
        study = _asha_like_study(direction)
        study.sampler = sampler
        return [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(30)]  # asked, not told: a constant liar each

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        plain = suggestions(FastTPESampler(seed=3, n_startup_trials=5, constant_liar=True))
        mf = suggestions(FastTPESampler(seed=3, n_startup_trials=5, constant_liar=True, rung_enough=10))
    assert float(np.median(mf)) > 0.6 > 0.4 > float(np.median(plain)), (np.median(mf), np.median(plain))
    sampler = make_sampler("mf_tpe", resolve_space(["seven_key"]), 0, max_grid_points=10)
    assert isinstance(sampler, FastTPESampler) and sampler._rung_enough == 10 and sampler._max_history == 1000
    with pytest.raises(ValueError, match="rung_enough"):
        FastTPESampler(rung_enough=1)


def test_tpe_without_groups_suggests_what_optunas_default_tpe_does_and_options_apply_to_tpe_samplers_only() -> None:
    space = resolve_space(["seven_key"])  # conditional parameters: where grouping matters

    def suggestions(sampler: optuna.samplers.BaseSampler, n: int = 30) -> list[dict[str, Any]]:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        out = []
        for _ in range(n):
            trial = study.ask()
            params = suggest(trial, space)
            study.tell(trial, -math.log(params["lr"]) - params.get("beta1", 0.5))
            out.append(params)
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna 5's TPESampler defaults (multivariate, no groups, constant liar) with Caviar's maths
        # (SciPy's log_ndtr differs from Optuna's in the last bit)
        optunas = suggestions(FastTPESampler(seed=4))
        ours = suggestions(make_sampler("tpe", space, 4, max_grid_points=10, options={"group": False}))
        caviars = suggestions(make_sampler("tpe", space, 4, max_grid_points=10, options={"group": None}))  # None: the default
    assert ours == optunas
    assert caviars != optunas and caviars[:10] == optunas[:10]  # the same random start, then groups
    independent = make_sampler("mf_tpe", space, 4, max_grid_points=10, options={"multivariate": False, "constant_liar": False})
    assert isinstance(independent, FastTPESampler) and independent._rung_enough == 10
    assert (independent._multivariate, independent._group, independent._constant_liar) == (False, False, False)  # no group without multivariate
    with pytest.raises(ValueError, match="apply to samplers tpe, mf_tpe only"):
        make_sampler("random", space, 4, max_grid_points=10, options={"multivariate": False})
