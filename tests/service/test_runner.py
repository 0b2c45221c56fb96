"""The driver's parts without a cluster: the scheduler registry and the store callback's writes."""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from service.definition import SCHEDULERS, Scheduler
from service.store import Store, migrate


def test_every_scheduler_name_builds_its_tune_scheduler() -> None:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule

    from service.runner.schedulers import make_scheduler

    expected = {"asha": ASHAScheduler, "hyperband": HyperBandScheduler, "median": MedianStoppingRule, "none": FIFOScheduler}
    assert set(expected) == set(SCHEDULERS)
    for name, cls in expected.items():
        assert isinstance(make_scheduler(Scheduler(type=name, grace_period=1), 10), cls)


def test_rungs_are_the_epochs_where_ray_asha_judges_a_trial() -> None:
    """Checked against Ray's own _Bracket, including a fractional reduction factor."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    from service.runner.schedulers import rungs

    for grace, rf, max_t in [(2, 3.0, 30), (1, 4.0, 30), (1, 2.0, 16), (2, 2.5, 30), (3, 3.0, 3), (1, 3.0, 100)]:
        bracket = _Bracket(grace, max_t, rf, 0)
        judged = sorted({next(e for e in range(1, max_t + 1) if e >= milestone) for milestone, _ in bracket._rungs})
        assert rungs(Scheduler(grace_period=grace, reduction_factor=rf, max_t=max_t), 999) == sorted({*judged, max_t})
    assert rungs(Scheduler(), 30) == [2, 6, 18, 30]


def test_the_searcher_tells_optuna_each_trials_value_at_the_rungs_once_and_at_its_end() -> None:
    import optuna

    from search_spaces import define_by_run, make_sampler, resolve_space
    from service.runner.searcher import PruningOptunaSearch

    space = resolve_space(["seven_key"])
    search = PruningOptunaSearch(space=define_by_run(space, {"epochs": 30}), metric="val_accuracy", mode="max",
                                 sampler=make_sampler("mf_tpe", space, 0, max_grid_points=10), epochs=30, rungs=[2, 6, 18, 30])
    for tid in "abc":
        assert search.suggest(tid)
    curve = {e: e / 100 for e in range(1, 31)}
    for e in range(1, 19):  # a: through epoch 18, then stopped by ASHA there (Tune forwards that result at completion)
        search.on_trial_result("a", {"training_iteration": e, "epoch": e, "val_accuracy": curve[e]})
    search.on_trial_complete("a", {"training_iteration": 18, "epoch": 18, "val_accuracy": curve[18]})
    for e in range(1, 31):  # b: to the end
        search.on_trial_result("b", {"training_iteration": e, "epoch": e, "val_accuracy": curve[e] + 0.5})
    with warnings.catch_warnings():  # b's epoch 30 is heard twice (as a result, then at completion): told once, quietly
        warnings.simplefilter("error")
        search.on_trial_complete("b", {"training_iteration": 30, "epoch": 30, "val_accuracy": curve[30] + 0.5})
    for e in range(1, 8):  # c: still running at epoch 7
        search.on_trial_result("c", {"training_iteration": e, "epoch": e, "val_accuracy": curve[e]})
    trials = {t.number: t for t in search._ot_study.get_trials(deepcopy=False)}  # type: ignore[union-attr]
    assert trials[0].state == optuna.trial.TrialState.PRUNED and trials[0].intermediate_values == {2: 0.02, 6: 0.06, 18: 0.18}
    assert trials[1].state == optuna.trial.TrialState.COMPLETE and trials[1].value == 0.8
    assert trials[1].intermediate_values == {e: curve[e] + 0.5 for e in (2, 6, 18, 30)}
    assert trials[2].state == optuna.trial.TrialState.RUNNING and trials[2].intermediate_values == {2: 0.02, 6: 0.06}
    again = pickle.loads(pickle.dumps(search))  # Tune saves the searcher with the experiment
    assert again.rungs == frozenset({2, 6, 18, 30})
    # without rungs (a searcher saved before they existed): a stopped trial still carries its last value
    plain = PruningOptunaSearch(space=define_by_run(space, {"epochs": 30}), metric="val_accuracy", mode="max",
                                sampler=make_sampler("tpe", space, 0, max_grid_points=10), epochs=30)
    plain.suggest("a")
    for e in range(1, 7):
        plain.on_trial_result("a", {"training_iteration": e, "epoch": e, "val_accuracy": curve[e]})
    plain.on_trial_complete("a", {"training_iteration": 6, "epoch": 6, "val_accuracy": curve[6]})
    assert plain._ot_study.get_trials(deepcopy=False)[0].intermediate_values == {6: 0.06}  # type: ignore[union-attr]


@dataclass
class FakeTrial:
    trial_id: str
    config: dict[str, Any] = field(default_factory=dict)
    last_result: dict[str, Any] = field(default_factory=dict)

    @property
    def storage(self) -> Any:  # Tune's StorageContext: the trial's directory under the experiment
        return SimpleNamespace(trial_dir_name=f"train_{self.trial_id}_00000")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path / 'caviar.db'}"
    migrate(url)
    return Store(url)


def test_the_callback_stores_declared_metrics_and_outcomes_and_a_restored_one_forgets_unknown_trials(store: Store) -> None:
    from service.runner.callbacks import StoreCallback

    sid = store.studies.create("s", {}).id
    cb = StoreCallback(sid, store.url, "val_f1", "max", epochs=3, metrics=("val_f1",))
    done, stopped, lost = FakeTrial("a", {"lr": 0.1, "dataset": {"name": "digits"}}), FakeTrial("b", {"lr": 0.2}), FakeTrial("c")
    for t in (done, stopped, lost):
        cb.on_trial_start(0, [], t)
    for epoch, f1 in ((1, 0.5), (2, 0.7), (3, 0.6)):
        cb.on_trial_result(0, [], done, {"epoch": epoch, "val_f1": f1, "time_this_iter_s": 0.1, "pid": 1})
    cb.on_trial_result(0, [], stopped, {"epoch": 1, "val_f1": 0.4, "node_ip": "10.0.0.7", "device": "cuda:0 (NVIDIA H200, physical 3)"})
    done.last_result, stopped.last_result = {"epoch": 3, "config": {"epochs": 3}}, {"epoch": 1, "config": {"epochs": 3}}
    cb.on_trial_complete(0, [], done)
    cb.on_trial_complete(0, [], stopped)
    rows = {t.trial_id: t for t in store.trials.for_study(sid)}
    assert rows["a"].config == {"lr": 0.1}  # the dataset spec is not a trial's configuration
    assert (rows["a"].state, rows["a"].best_value, rows["b"].state) == ("completed", 0.7, "stopped_early")
    assert (rows["a"].node, rows["b"].node) == (None, "10.0.0.7")  # from Tune's node_ip, when a result carries it
    assert rows["b"].trial_dir == "train_b_00000"  # where its checkpoints are, under the study's experiment
    assert (rows["a"].device, rows["b"].device) == (None, "cuda:0 (NVIDIA H200, physical 3)")
    _, history = store.trials.get(sid, "a")  # type: ignore[misc]
    assert set(history[0]) == {"epoch", "val_f1", "reported_at"}  # declared metrics only, not Tune's bookkeeping
    # Tune saved the experiment with this callback; a resumed driver unpickles it and sees trials a and b only
    restored = pickle.loads(pickle.dumps(cb))
    restored.on_step_begin(0, [done, stopped])
    assert {t.trial_id for t in store.trials.for_study(sid)} == {"a", "b"}
    cb.on_step_begin(1, [done])  # the original (a fresh run) forgets nothing
    assert {t.trial_id for t in store.trials.for_study(sid)} == {"a", "b"}


def test_a_study_is_failed_only_when_every_trial_failed(store: Store) -> None:
    from service.runner.__main__ import nothing_measured

    sid = store.studies.create("s", {}).id
    assert nothing_measured(store, sid) == "no trial ran"
    for i, error in enumerate(["ValueError: bad (full traceback in /a)", "ValueError: bad (full traceback in /b)", "OSError: disk"]):
        store.trials.upsert(sid, f"t{i}", config={}, state="failed", error=error)
    assert nothing_measured(store, sid) == "all 3 trials failed; the most common error (2 of 3): ValueError: bad"
    store.trials.upsert(sid, "cut", config={}, state="running")  # cut short by time_budget_s: it measured something
    assert nothing_measured(store, sid) is None


def test_the_callback_writes_epochs_in_batches_and_before_a_checkpoint_or_an_end_counts(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from service.runner import callbacks
    from service.runner.callbacks import StoreCallback

    sid = store.studies.create("s", {}).id
    cb = StoreCallback(sid, store.url, "val_f1", "max", epochs=5, metrics=("val_f1",))
    a, b = FakeTrial("a", {"lr": 0.1}), FakeTrial("b", {"lr": 0.2})
    for t in (a, b):
        cb.on_trial_start(0, [], t)

    def stored(trial_id: str) -> list[int]:
        return [h["epoch"] for h in store.trials.get(sid, trial_id)[1]]  # type: ignore[index]

    cb.on_trial_result(0, [], a, {"epoch": 1, "val_f1": 0.5})
    cb.on_trial_result(0, [], b, {"epoch": 1, "val_f1": 0.4})
    assert stored("a") == [] and stored("b") == []  # pending: one transaction for the batch
    cb.on_checkpoint(0, [], a, checkpoint=None)  # before Tune counts a checkpoint, everything reported is stored
    assert stored("a") == [1] and stored("b") == [1]

    cb.on_trial_result(0, [], a, {"epoch": 2, "val_f1": 0.6})
    saved = pickle.loads(pickle.dumps(cb))  # Tune's experiment state: pending results are not in it
    assert saved._pending == [] and saved._restored
    monkeypatch.setattr(callbacks, "FLUSH_S", 3600.0)
    cb.on_step_end(0, [])
    assert stored("a") == [1]  # younger than FLUSH_S
    monkeypatch.setattr(callbacks, "FLUSH_S", 0.0)
    cb.on_step_end(0, [])
    assert stored("a") == [1, 2]

    monkeypatch.setattr(callbacks, "FLUSH_N", 2)
    cb.on_trial_result(0, [], a, {"epoch": 3, "val_f1": 0.7})
    cb.on_trial_result(0, [], a, {"epoch": 3, "val_f1": 0.7})  # the same epoch twice in one batch: stored once
    assert stored("a") == [1, 2, 3]

    broken = store.trials.add_epochs
    monkeypatch.setattr(store.trials, "add_epochs", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("database down")))
    monkeypatch.setattr(callbacks, "_STORES", {store.url: store})
    cb.on_trial_result(0, [], b, {"epoch": 2, "val_f1": 0.5})
    with pytest.raises(RuntimeError):
        cb.flush()
    assert len(cb._pending) == 1  # kept for the next flush
    monkeypatch.setattr(store.trials, "add_epochs", broken)
    b.last_result = {"epoch": 2, "config": {"epochs": 5}}
    cb.on_trial_complete(0, [], b)  # its results first, then its outcome
    assert stored("b") == [1, 2] and store.trials.get(sid, "b")[0].state == "stopped_early"  # type: ignore[index]
    assert store.trials.get(sid, "a")[0].best_value == 0.7  # type: ignore[index]


def _improving_stream(seed: int, n: int, max_t: int) -> list[tuple[int, int, float, float]]:
    """Results as a learning sampler produces them: trial i's quality grows with i over the first
    third of the study, then stays (plus noise); two trials train at a time, in order."""
    import random

    rng = random.Random(seed)
    quality = [0.3 + 0.6 * min(1.0, 3 * i / n) + rng.gauss(0, 0.08) for i in range(n)]
    out = []
    for i in range(n):
        for epoch in range(1, max_t + 1):
            out.append((i / 2 + epoch * 0.01, i, epoch, quality[i] * (1 - 0.6 ** epoch) + rng.gauss(0, 0.005)))
    return [(i, epoch, acc, 0.0) for _, i, epoch, acc in sorted(out)]


def test_recent_asha_is_rays_asha_with_a_long_window_and_halves_as_asha_means_under_a_learning_sampler() -> None:
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from service.runner.schedulers import RecentASHA, make_scheduler
    from tests.service.test_mo_asha import run, stream

    kw = {"time_attr": "epoch", "metric": "val_accuracy", "mode": "max", "max_t": 20, "grace_period": 2, "reduction_factor": 3}
    for seed in range(6):  # a window longer than the study: every decision Ray's
        results = stream(seed, 30, 20)
        assert run(RecentASHA(window=1000, **kw), results, 30) == run(ASHAScheduler(**kw), results, 30)
    ran_all: dict[str, list[int]] = {"asha": [], "recent": []}
    for seed in range(6):
        n = 64
        results = _improving_stream(seed, n, 20)
        best = max(range(n), key=lambda i: max(acc for j, _, acc, _ in results if j == i))
        for name, scheduler in (("asha", ASHAScheduler(**kw)), ("recent", RecentASHA(window=9, **kw))):
            decisions = run(scheduler, results, n)
            finished = [i for i in range(n) if decisions.get((i, 20)) is not None]
            ran_all[name].append(len(finished))
            assert best in finished  # the best trial runs to the end either way
            assert all(a in (TrialScheduler.CONTINUE, TrialScheduler.STOP) for a in decisions.values())
    # successive halving with rf 3 over rungs 2, 6, 18 means 64 / 27 (2 or 3) trials run to the end;
    # against every recorded value more than half of them do, against the recent ones far fewer
    # (not 2 or 3: while the sampler is still learning, each trial is better than its recent peers too)
    assert sum(ran_all["asha"]) / 6 > 32, ran_all
    assert sum(ran_all["recent"]) < 0.75 * sum(ran_all["asha"]), ran_all
    assert isinstance(make_scheduler(Scheduler(window=9), 20), RecentASHA)
    assert type(make_scheduler(Scheduler(), 20)) is ASHAScheduler


def test_a_window_is_for_one_objective_asha_only() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as bad:
        Scheduler(type="median", window=9)
    assert bad.value.errors()[0]["loc"] == ("window",) and "asha only" in str(bad.value)
    with pytest.raises(ValidationError):
        Scheduler(window=1)


def test_the_runner_builds_the_sampler_with_the_definitions_tpe_options() -> None:
    from search_spaces import make_sampler
    from service.definition import StudyDefinition

    d = StudyDefinition.model_validate({"name": "n", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"}, "search_space": "seven_key",
                                        "sampler": {"type": "mf_tpe", "group": False, "constant_liar": False}})
    # as service.runner.tuner builds it
    built = make_sampler(d.sampler.type, d.space(), d.sampler.seed, max_grid_points=10**9, options=d.sampler.options())
    assert (built._multivariate, built._group, built._constant_liar, built._rung_enough) == (True, False, False, 10)  # type: ignore[attr-defined]
    default = StudyDefinition.model_validate({**d.model_dump(), "sampler": {"type": "tpe"}}).sampler
    built = make_sampler(default.type, d.space(), 0, max_grid_points=10**9, options=default.options())
    assert (built._multivariate, built._group, built._constant_liar) == (True, True, True)  # type: ignore[attr-defined]
