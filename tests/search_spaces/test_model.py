"""The search-space language: every rule rejects its bad case with a message naming the parameter."""

from __future__ import annotations

import math
import pickle

import numpy as np
import optuna
import pytest
from scipy import stats

from search_spaces import (
    SearchSpaceError,
    define_by_run,
    list_presets,
    load_preset,
    make_sampler,
    parse_space,
    resolve_space,
    suggest,
)
from service.definition import MULTI_OBJECTIVE_SAMPLERS

F = {"type": "float", "low": 0.1, "high": 1.0}


@pytest.mark.parametrize(
    ("space", "param", "rule"),
    [
        ({"lr": {"type": "float", "low": 1.0, "high": 0.1}}, "lr", "low must be < high"),
        ({"lr": {"type": "float", "low": 0.5, "high": 0.5}}, "lr", "low must be < high"),
        ({"depth": {"type": "int", "low": 4, "high": 1}}, "depth", "low must be < high"),
        ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "lr", "low > 0"),
        ({"width": {"type": "int", "low": 0, "high": 512, "log": True}}, "width", "low >= 1"),
        ({"lr": {"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}}, "lr", "log and step are mutually exclusive"),
        ({"width": {"type": "int", "low": 1, "high": 9, "log": True, "step": 2}}, "width", "log and step are mutually exclusive"),
        ({"lr": {"type": "float", "low": 0.1, "high": 1.0, "step": 0.0}}, "lr", "step must be a finite number > 0"),
        ({"lr": {"type": "float", "low": 0.1, "high": 1.0, "step": float("nan")}}, "lr", "step must be a finite number > 0"),
        ({"lr": {"type": "float", "low": 1e-3, "high": 0.1, "step": 1e-300}}, "lr", "step is too small"),
        ({"width": {"type": "int", "low": 1, "high": 10**32}}, "width", "within ±2**53"),
        ({"width": {"type": "int", "low": 1, "high": 9, "step": 0}}, "width", "step must be >= 1"),
        ({"lr": {"type": "categorical", "choices": [float("nan"), 0.1]}}, "lr", "choices must be finite numbers"),
        ({"opt": {"type": "categorical", "choices": []}}, "opt", "choices must not be empty"),
        ({"opt": {"type": "categorical", "choices": ["adam", "adam"]}}, "opt", "choices must be unique"),
        ({"Lr": F}, "Lr", "parameter names must match [a-z][a-z0-9_]{0,63}"),
        ({"1lr": F}, "1lr", "parameter names must match"),
        ({"a" * 65: F}, "a" * 65, "parameter names must match"),
        ({"momentum": {**F, "when": {"optimizer": ["sgd"]}}}, "momentum", "when names unknown parameter 'optimizer'"),
        (
            {"a": {**F, "when": {"b": [0.5]}}, "b": {**F, "when": {"a": [0.5]}}},
            "a",
            "when forms a cycle (a -> b -> a)",
        ),
        ({"a": {**F, "when": {"a": [0.5]}}}, "a", "when forms a cycle"),
        (
            {"opt": {"type": "categorical", "choices": ["sgd"]}, "m": {**F, "when": {"opt": ["adam"]}}},
            "m",
            "can never occur",
        ),
        ({"lr": {"type": "normal", "low": 0.1, "high": 1.0}}, "lr", "does not match any of the expected tags"),
        ({"lr": {"type": "float", "low": 0.1, "high": 1.0, "scale": 2}}, "lr", "Extra inputs are not permitted"),
    ],
)
def test_each_rule_rejects_its_bad_case_naming_the_parameter(space: dict, param: str, rule: str) -> None:
    with pytest.raises(SearchSpaceError) as info:
        parse_space(space)
    assert info.value.parameter == param
    assert str(info.value).startswith(f"{param}: ")
    assert rule in str(info.value)


def test_at_most_64_parameters() -> None:
    parse_space({f"p{i}": F for i in range(64)})
    with pytest.raises(SearchSpaceError, match="at most 64 parameters"):
        parse_space({f"p{i}": F for i in range(65)})


def test_grid_needs_finite_parameters_and_a_bounded_product() -> None:
    with pytest.raises(SearchSpaceError, match="the grid has 4503599627370496 points"):  # counted, never built
        parse_space({"width": {"type": "int", "low": 1, "high": 2**52}}).grid()
    with pytest.raises(SearchSpaceError, match="lr: grid sampling needs a finite parameter"):
        parse_space({"lr": F}).grid()
    space = parse_space(
        {
            "a": {"type": "int", "low": 1, "high": 100},
            "b": {"type": "int", "low": 1, "high": 100},
            "c": {"type": "categorical", "choices": [1, 2]},
        }
    )
    with pytest.raises(SearchSpaceError, match="20000 points, more than the limit of 10000"):
        space.grid()
    assert space.grid(max_points=20_000)["c"] == [1, 2]
    stepped = parse_space({"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25}})
    assert stepped.grid() == {"x": [0.0, 0.25, 0.5, 0.75, 1.0]}


def _configs(space_def: dict, n: int, seed: int = 0) -> list[dict]:
    space = parse_space(space_def)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest(trial, space))
        study.tell(trial, 0.0)
    return out


def test_conditionals_present_exactly_when_their_condition_holds() -> None:
    space_def = {
        "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": ["momentum"]}},
        "lr_schedule": {"type": "categorical", "choices": ["constant", "exponential"]},
        "decay_rate": {"type": "float", "low": 0.8, "high": 0.99, "when": {"lr_schedule": ["exponential"]}},
        # nested: only when decay_rate is itself active
        "warm": {"type": "categorical", "choices": [True, False], "when": {"lr_schedule": ["exponential"]}},
        "warm_epochs": {"type": "int", "low": 1, "high": 5, "when": {"warm": [True]}},
    }
    configs = _configs(space_def, 300)
    for c in configs:
        assert ("momentum" in c) == (c["optimizer"] == "momentum")
        assert ("decay_rate" in c) == (c["lr_schedule"] == "exponential")
        assert ("warm_epochs" in c) == (c.get("warm") is True)
        parse_space(space_def).check_config(c)
    assert any("momentum" in c for c in configs) and any("momentum" not in c for c in configs)
    assert any("warm_epochs" in c for c in configs)


def test_check_config_rejects_inactive_and_out_of_range_values() -> None:
    space = load_preset("seven_key")
    good = _configs(space.to_dict(), 1)[0]
    space.check_config(good)
    with pytest.raises(SearchSpaceError, match=r"lr: value 5\.0 is outside"):
        space.check_config({**good, "lr": 5.0})
    if good["optimizer"] not in ("momentum", "nesterov"):
        with pytest.raises(SearchSpaceError, match="momentum: is present although"):
            space.check_config({**good, "momentum": 0.9})


def test_log_parameter_is_log_uniform_and_linear_one_uniform() -> None:
    space_def = {
        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    }
    configs = _configs(space_def, 2000, seed=1)
    log_lr = np.log10([c["lr"] for c in configs])
    dropout = np.array([c["dropout"] for c in configs])
    # log10(lr) ~ U(-4, 0): a KS test cannot reject; lr itself is far from uniform on [1e-4, 1]
    assert stats.kstest(log_lr, stats.uniform(loc=-4, scale=4).cdf).pvalue > 0.01
    assert stats.kstest([c["lr"] for c in configs], stats.uniform(loc=1e-4, scale=1.0).cdf).pvalue < 1e-6
    assert stats.kstest(dropout, stats.uniform(loc=0, scale=0.5).cdf).pvalue > 0.01
    # about a quarter of the samples in each decade
    assert 0.2 < np.mean(log_lr < -3) < 0.3


def test_define_by_run_returns_fixed_values_and_matches_distributions() -> None:
    space = resolve_space(["seven_key", "batchnorm"])
    fn = define_by_run(space, fixed={"epochs": 30})
    study = optuna.create_study(sampler=make_sampler("random", space, 0, max_grid_points=10_000))
    trial = study.ask()
    assert fn(trial) == {"epochs": 30}
    dists = space.distributions()
    for name, dist in trial.distributions.items():
        assert dists[name] == dist
    space.check_config(trial.params)


@pytest.mark.parametrize("kind", ["tpe", "random", "grid", "cmaes", "qmc", "gp", "nsga2", "nsga3"])
def test_every_sampler_runs_on_a_space(kind: str) -> None:
    space = parse_space(
        {
            "x": {"type": "float", "low": -2.0, "high": 2.0, "step": 0.5},
            "n": {"type": "int", "low": 1, "high": 4},
            "opt": {"type": "categorical", "choices": ["a", "b"]},
        }
    )
    study = optuna.create_study(sampler=make_sampler(kind, space, 0, max_grid_points=10_000))
    study.optimize(lambda t: suggest(t, space)["x"] ** 2 + suggest(t, space)["n"], n_trials=6)
    assert len(study.trials) == 6
    for t in study.trials:
        space.check_config(t.params)


@pytest.mark.parametrize("kind", MULTI_OBJECTIVE_SAMPLERS)
def test_the_multi_objective_samplers_run_with_two_objectives(kind: str) -> None:
    """What service.definition lets a study with several objectives use runs with several in Optuna."""
    space = parse_space({"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25}, "opt": {"type": "categorical", "choices": ["a", "b"]}})
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=make_sampler(kind, space, 0, max_grid_points=100))
    study.optimize(lambda t: (lambda c: (c["x"], c["x"] ** 2 + (c["opt"] == "a")))(suggest(t, space)), n_trials=6)
    assert len(study.trials) == 6 and all(len(t.values) == 2 for t in study.trials)
    assert study.best_trials
    again = pickle.loads(pickle.dumps(study.sampler))  # Ray Tune pickles the searcher with its sampler
    again.sample_independent(study, study.trials[0], "x", space.distributions()["x"])


def test_unknown_sampler() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'annealing'"):
        make_sampler("annealing", parse_space({"x": F}), 0, max_grid_points=10)


def test_presets_are_listed_and_hold_the_seed_knobs() -> None:
    assert {"seven_key", "batchnorm", "cnn"} <= set(list_presets())
    seven = load_preset("seven_key")
    assert {"lr", "batch_size", "weight_init", "optimizer", "weight_decay", "dropout", "l1", "depth", "width", "lr_schedule"} <= set(seven)
    lr = seven["lr"]
    assert (lr.low, lr.high, lr.log) == (1e-4, 1.0, True)  # type: ignore[attr-defined]
    assert seven["batch_size"].choices == [16, 32, 64, 128, 256]  # type: ignore[attr-defined]
    assert seven["momentum"].when == {"optimizer": ["momentum", "nesterov"]}
    assert seven["decay_rate"].when == {"lr_schedule": ["exponential"]}
    assert set(load_preset("batchnorm")) == {"bn_placement", "bn_momentum", "bn_eps", "bn_before_softmax"}
    cnn = load_preset("cnn")
    assert {"channels", "kernel_size", "depth", "optimizer", "weight_decay"} <= set(cnn) and "width" not in cnn
    assert cnn["depth"].high == 3  # type: ignore[attr-defined]  # the cnn preset overrides seven_key's depth


def test_resolve_merges_left_to_right_and_rejects_unknown_presets() -> None:
    space = resolve_space(["seven_key", {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}])
    assert math.isclose(space["lr"].high, 0.1)  # type: ignore[attr-defined]
    with pytest.raises(SearchSpaceError, match="unknown search-space preset 'eight_key'"):
        resolve_space("eight_key")
    with pytest.raises(SearchSpaceError, match="lr: low must be < high"):
        resolve_space(["seven_key", {"lr": {"type": "float", "low": 1, "high": 0.1}}])
