"""A study with two objectives on the session's Ray head through `caviar serve`: the MLP trades
validation accuracy against its parameter count, multi-objective ASHA stops some trials, Optuna
holds those as PRUNED and the others with both values, and the API's Pareto front is Optuna's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from service.local import LocalServer, wait_until
from service.runner.optuna_storage import optuna_journal

CAVIAR = str(Path(sys.executable).parent / "caviar")
MO = {"name": "acc-vs-size", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"},
      "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 0.3, "log": True},
                       "width": {"type": "int", "low": 8, "high": 256, "log": True}},
      "fixed": {"epochs": 6, "depth": 2},
      "objectives": [{"metric": "val_accuracy", "mode": "max"}, {"metric": "param_count", "mode": "min"}],
      "sampler": {"type": "nsga2", "seed": 3}, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
      "budget": {"num_trials": 10, "max_concurrent_trials": 2}}


@pytest.mark.ray
def test_two_objectives_with_multi_objective_asha_end_to_end(api: LocalServer, caviar_data_dir: Path) -> None:
    with api.client() as client:
        sid = client.submit(MO)["id"]
        s = wait_until(lambda: (s := client.study(sid))["status"] in ("completed", "failed", "cancelled") and s, 300,
                       f"study {sid} to finish", interval=0.5)
        assert s["status"] == "completed", s["error"]
        trials = client.trials(sid)
        pareto = client.pareto(sid)
    stopped = [t for t in trials if t["state"] == "stopped_early"]
    done = [t for t in trials if t["state"] == "completed"]
    assert len(trials) == 10 and stopped and done, [(t["state"], t["epochs"]) for t in trials]
    assert all(t["epochs"] in (1, 3) for t in stopped)  # stopped at a rung (grace 1, rf 3)
    for t in trials:  # the built-in reports what the second objective needs
        assert t["last_metrics"]["param_count"] > 0 and t["last_metrics"]["latency_ms"] > 0

    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(optuna_journal(caviar_data_dir, sid))))
    study = optuna.load_study(study_name=f"caviar-{sid}", storage=journal)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]

    def key(params: dict) -> tuple:
        return round(params["lr"], 12), params["width"]

    by_params = {key(t.params): t for t in study.trials}
    for t in stopped:  # an ASHA-stopped trial reached Optuna as pruned, not as a finished low-fidelity one
        assert by_params[key(t["config"])].state == optuna.trial.TrialState.PRUNED
    for t in done:  # a completed one with both values, as the store has them
        ot = by_params[key(t["config"])]
        assert ot.state == optuna.trial.TrialState.COMPLETE
        assert ot.values == pytest.approx([t["last_metrics"]["val_accuracy"], t["last_metrics"]["param_count"]])
    assert {key(p["config"]) for p in pareto["front"]} == {key(t.params) for t in study.best_trials}
    assert pareto["trials_considered"] == len(done)

    out = subprocess.run([CAVIAR, "pareto", sid, "--url", api.url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{len(pareto['front'])} on the front of {len(done)} completed trials" in out.stdout
    assert all(p["trial_id"] in out.stdout for p in pareto["front"])
