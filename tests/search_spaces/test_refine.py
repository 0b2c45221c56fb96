"""Coarse to fine: the narrowed space holds the top-k and stays inside the original bounds."""

from __future__ import annotations

import math

import optuna
import pytest

from search_spaces import CategoricalParam, FloatParam, IntParam, SearchSpaceError, narrow, resolve_space, suggest


def _sample(space, n: int, seed: int) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        out.append(suggest(t, space))
        study.tell(t, 0.0)
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [1, 3, 8])
def test_narrowed_space_contains_top_k_and_stays_inside_old_bounds(seed: int, k: int) -> None:
    space = resolve_space(["seven_key", "batchnorm", {"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.1}}])
    top = _sample(space, k, seed)
    new = narrow(space, top)
    for config in top:
        new.check_config(config)  # every top-k configuration lies inside the new space
    for name, p in new.items():
        old = space[name]
        if isinstance(p, (FloatParam, IntParam)):
            assert old.low <= p.low < p.high <= old.high  # type: ignore[attr-defined]
            assert p.log == old.log  # type: ignore[attr-defined]
        else:
            assert isinstance(p, CategoricalParam)
            assert set(map(repr, p.choices)) <= set(map(repr, old.choices))  # type: ignore[attr-defined]


def test_ranges_shrink_in_log_space_around_the_best() -> None:
    space = resolve_space({"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}, "width": {"type": "int", "low": 32, "high": 512, "log": True}, "opt": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]}})
    top = [{"lr": 1e-3, "width": 64, "opt": "adam"}, {"lr": 1e-2, "width": 128, "opt": "adam"}]
    new = narrow(space, top, margin=0.25)
    lr = new["lr"]
    # one decade of span, padded by a quarter decade on each side, in log space
    assert math.isclose(math.log10(lr.low), -3.25, abs_tol=1e-9) and math.isclose(math.log10(lr.high), -1.75, abs_tol=1e-9)  # type: ignore[attr-defined]
    assert new["opt"].choices == ["adam"]  # type: ignore[attr-defined]
    assert new["width"].low <= 64 and new["width"].high >= 128  # type: ignore[attr-defined]
    assert new["width"].high - new["width"].low < 512 - 32  # type: ignore[attr-defined]


def test_children_of_dropped_choices_are_dropped() -> None:
    space = resolve_space("seven_key")
    top = [c for c in _sample(space, 200, 0) if c["optimizer"] == "adam" and c["lr_schedule"] == "cosine"][:3]
    new = narrow(space, top)
    assert "momentum" not in new and "decay_rate" not in new and "step_size" not in new
    assert new["optimizer"].choices == ["adam"]  # type: ignore[attr-defined]


def test_narrowing_needs_configurations() -> None:
    with pytest.raises(SearchSpaceError, match="at least one configuration"):
        narrow(resolve_space("batchnorm"), [])
