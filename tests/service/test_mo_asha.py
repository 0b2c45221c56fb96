"""Several objectives: the Pareto helpers against brute force, and multi-objective ASHA against Ray's
own ASHAScheduler (with one objective it must decide exactly as Ray does)."""

from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from service.definition import Scheduler
from service.pareto import crowding, dominates, front, hypervolume, minimized, order, ranks
from service.runner.mo_asha import MultiObjectiveASHA, kept
from service.runner.schedulers import make_scheduler


def points(n: int, dims: int, seed: int, grid: int = 0) -> list[tuple[float, ...]]:
    rng = random.Random(seed)
    return [tuple((rng.randrange(grid) if grid else rng.random()) for _ in range(dims)) for _ in range(n)]


@pytest.mark.parametrize(("dims", "grid"), [(2, 0), (3, 0), (2, 5)])
def test_front_and_ranks_equal_brute_force(dims: int, grid: int) -> None:
    for seed in range(20):
        pts = points(40, dims, seed, grid)  # grid: many ties and equal points
        assert front(pts) == [i for i, p in enumerate(pts) if not any(dominates(q, p) for q in pts)]
        r = ranks(pts)
        for i, j in itertools.permutations(range(len(pts)), 2):
            if dominates(pts[i], pts[j]):
                assert r[i] < r[j]
        for i, p in enumerate(pts):  # each point of rank k > 0 is dominated by one of rank k - 1
            assert r[i] == 0 or any(r[j] == r[i] - 1 and dominates(pts[j], p) for j in range(len(pts)))


def test_minimized_and_crowding() -> None:
    assert minimized({"acc": 0.9, "params": 10}, [("acc", "max"), ("params", "min")]) == (-0.9, 10.0)
    assert minimized({"acc": float("nan")}, [("acc", "max"), ("params", "min")]) == (math.inf, math.inf)
    c = crowding([(0.0, 4.0), (1.0, 2.0), (2.0, 1.0), (4.0, 0.0)])
    assert c[0] == c[3] == math.inf and c[1] == pytest.approx(2 / 4 + 3 / 4) and c[2] == pytest.approx(3 / 4 + 2 / 4)
    pts = [(3.0, 3.0), (0.0, 1.0), (1.0, 0.0), (0.5, 0.5)]
    assert order(pts)[-1] == 0 and set(order(pts)[:3]) == {1, 2, 3}


def test_hypervolume_equals_a_monte_carlo_estimate_and_optunas() -> None:
    for seed in range(5):
        pts = points(12, 2, seed)
        ref = (1.1, 1.2)
        hv = hypervolume(pts, ref)
        rng = random.Random(seed + 100)
        samples = [(rng.uniform(0, ref[0]), rng.uniform(0, ref[1])) for _ in range(40_000)]
        covered = sum(any(p[0] <= s[0] and p[1] <= s[1] for p in pts) for s in samples) / len(samples)
        assert hv == pytest.approx(covered * ref[0] * ref[1], abs=0.02)
        try:
            import numpy as np
            from optuna._hypervolume import compute_hypervolume
        except ImportError:  # pragma: no cover - Optuna moved its private helper; the estimate above still checks
            continue
        assert hv == pytest.approx(compute_hypervolume(np.array(pts), np.array(ref)))
    assert hypervolume([(2.0, 0.0)], (1.0, 1.0)) == 0.0


def test_kept_is_rays_percentile_rule_at_the_recorded_value_below() -> None:
    import numpy as np

    for rf in (2, 3, 4, 2.5):
        for m in range(1, 30):
            rng = random.Random(m)
            prior = sorted(rng.random() for _ in range(m))
            cutoff = np.nanpercentile(prior, (1 - 1 / rf) * 100, method="lower")
            for j in range(m + 1):  # a value with j prior values below it and m - j above
                value = (prior[j - 1] if j else 0.0) + ((prior[j] if j < m else 1.0) - (prior[j - 1] if j else 0.0)) / 2
                ray_goes_on = not value < cutoff
                assert ray_goes_on == (m - j < kept(m, rf)), (rf, m, j)


def fake_trial(i: int) -> Any:
    return SimpleNamespace(trial_id=f"t{i}", config={}, evaluated_params={}, placement_group_factory=None)


def stream(seed: int, n: int, max_t: int, digits: int = 0) -> list[tuple[int, int, float, float]]:
    """(trial, epoch, accuracy, size) results in an asynchronous order: trials start over time and
    report at different speeds."""
    rng = random.Random(seed)
    quality = [rng.random() for _ in range(n)]
    size = [rng.random() for _ in range(n)]
    clock = {i: rng.uniform(0, n / 2) for i in range(n)}
    epoch = dict.fromkeys(range(n), 0)
    out = []
    while clock:
        i = min(clock, key=lambda k: clock[k])
        epoch[i] += 1
        acc = quality[i] * (1 - 0.5 ** epoch[i]) + rng.gauss(0, 0.02)
        out.append((i, epoch[i], round(acc, digits) if digits else acc, size[i]))  # digits: accuracies that tie
        clock[i] += rng.uniform(0.5, 1.5)
        if epoch[i] >= max_t:
            del clock[i]
    return out


def run(scheduler: Any, results: list[tuple[int, int, float, float]], n: int) -> dict[tuple[int, int], str]:
    trials = [fake_trial(i) for i in range(n)]
    for t in trials:
        scheduler.on_trial_add(None, t)
    decisions, stopped = {}, set()
    for i, epoch, acc, size in results:
        if i in stopped:
            continue
        result = {"epoch": epoch, "val_accuracy": acc, "val_loss": -acc, "param_count": size}
        action = scheduler.on_trial_result(None, trials[i], result)
        decisions[(i, epoch)] = action
        if action == TrialScheduler.STOP:
            stopped.add(i)
            scheduler.on_trial_complete(None, trials[i], result)
    return decisions


@pytest.fixture
def rays_cutoff_at_the_value_below(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's ASHA interpolates its percentile between two recorded values; an order of several
    objectives has positions only, so MO-ASHA takes the recorded value below (numpy's "lower")."""
    import numpy as np
    from ray.tune.schedulers import async_hyperband

    monkeypatch.setattr(async_hyperband._Bracket, "cutoff", lambda self, recorded: np.nanpercentile(
        list(recorded.values()), (1 - 1 / self.rf) * 100, method="lower") if recorded else None)


@pytest.mark.usefixtures("rays_cutoff_at_the_value_below")
@pytest.mark.parametrize(("rf", "grace", "max_t", "metric", "mode"),
                         [(3, 2, 20, "val_accuracy", "max"), (2, 1, 9, "val_loss", "min"), (4, 1, 16, "val_accuracy", "max")])
@pytest.mark.parametrize("digits", [0, 1], ids=["distinct", "ties"])
def test_one_objective_decides_exactly_as_rays_asha(rf: float, grace: int, max_t: int, metric: str, mode: str, digits: int) -> None:
    for seed in range(8):
        n = 30
        results = stream(seed, n, max_t, digits)
        ray = run(ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=max_t, grace_period=grace, reduction_factor=rf), results, n)
        ours = run(MultiObjectiveASHA([(metric, mode)], max_t=max_t, grace_period=grace, reduction_factor=rf), results, n)
        assert ours == ray
        stops = sum(1 for (_, e), a in ours.items() if a == TrialScheduler.STOP and e < max_t)
        assert stops > 0  # the comparison means something: ASHA stopped some


def test_a_constant_second_objective_changes_nothing_and_a_real_one_keeps_the_front() -> None:
    n, max_t = 30, 9
    results = stream(3, n, max_t)
    one = run(MultiObjectiveASHA([("val_accuracy", "max")], max_t=max_t, grace_period=1, reduction_factor=3), results, n)
    flat = [(i, e, a, 1.0) for i, e, a, _ in results]
    assert run(MultiObjectiveASHA([("val_accuracy", "max"), ("param_count", "min")], max_t=max_t, grace_period=1,
                                  reduction_factor=3), flat, n) == one
    two = MultiObjectiveASHA([("val_accuracy", "max"), ("param_count", "min")], max_t=max_t, grace_period=1, reduction_factor=3)
    decided = run(two, results, n)
    assert decided != one  # the second objective matters
    # at each rung, from dominance alone: a trial dominated by as many of the m points recorded there
    # before it as ASHA keeps stopped; one that fewer than that many were not dominated by went on
    stops = goes = 0
    for milestone, recorded in two.rungs:
        seen: list[tuple[float, ...]] = []
        for tid, p in recorded.items():  # insertion order = the order they were judged
            action = decided.get((int(tid[1:]), int(milestone)))
            if seen and action is not None and int(milestone) < max_t:
                k = kept(len(seen), 3)
                if sum(dominates(q, p) for q in seen) >= k:
                    assert action == TrialScheduler.STOP
                    stops += 1
                if sum(not dominates(p, q) for q in seen) < k:
                    assert action == TrialScheduler.CONTINUE
                    goes += 1
            seen.append(p)
    assert stops >= 3 and goes >= 3


def test_a_result_without_every_objective_is_not_judged() -> None:
    s = MultiObjectiveASHA([("val_accuracy", "max"), ("param_count", "min")], max_t=9, grace_period=1, reduction_factor=3)
    first, second = fake_trial(0), fake_trial(1)
    assert s.on_trial_result(None, first, {"epoch": 1, "val_accuracy": 0.9, "param_count": 10}) == TrialScheduler.CONTINUE
    assert s.on_trial_result(None, second, {"epoch": 1, "val_accuracy": float("nan"), "param_count": 5}) == TrialScheduler.CONTINUE
    assert s.on_trial_result(None, second, {"epoch": 1, "val_accuracy": 0.5}) == TrialScheduler.CONTINUE
    assert list(s.rungs[-1][1]) == ["t0"]  # neither was recorded at the rung
    assert s.on_trial_result(None, second, {"epoch": 1, "val_accuracy": 0.5, "param_count": 50}) == TrialScheduler.STOP
    assert s.on_trial_result(None, fake_trial(2), {"epoch": 1, "val_accuracy": 0.9, "param_count": 10}) == TrialScheduler.CONTINUE  # a tie goes on


def test_ranks_of_many_points_stay_exact() -> None:
    pts = points(600, 2, 7, grid=40)
    r = ranks(pts)
    for i in random.Random(1).sample(range(600), 60):  # the longest chain of dominators ends at each point's rank
        dominators = [j for j in range(600) if dominates(pts[j], pts[i])]
        assert r[i] == (max(r[j] for j in dominators) + 1 if dominators else 0)


def test_make_scheduler_picks_multi_objective_asha_for_several_objectives() -> None:
    s = Scheduler(type="asha", grace_period=2, reduction_factor=3)
    assert isinstance(make_scheduler(s, 12, [("val_accuracy", "max"), ("param_count", "min")]), MultiObjectiveASHA)
    assert isinstance(make_scheduler(s, 12, [("val_accuracy", "max")]), ASHAScheduler)
    assert isinstance(make_scheduler(s, 12), ASHAScheduler)
    with pytest.raises(ValueError, match="grace_period"):
        MultiObjectiveASHA([("a", "max")], max_t=2, grace_period=3)
