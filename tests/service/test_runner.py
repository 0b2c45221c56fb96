"""The driver's parts without a cluster: the scheduler registry and the store callback's writes."""

from __future__ import annotations

import pickle
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
