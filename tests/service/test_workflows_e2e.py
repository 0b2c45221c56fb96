"""Coarse to fine, warm start and extend on the session's Ray head through `caviar serve`: the
refined study runs the parent's best configurations first, and an extended study continues the
same Optuna study with its trial list grown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from service.client import Client
from service.local import LocalServer, wait_until
from service.runner.optuna_storage import optuna_journal

CAVIAR = str(Path(sys.executable).parent / "caviar")
COARSE = {"name": "coarse", "trainable": "busy_work", "dataset": {"name": "digits"},
          "search_space": {"x": {"type": "float", "low": 0, "high": 1}, "y": {"type": "float", "low": 0, "high": 1}},
          "fixed": {"epochs": 3, "seconds_per_epoch": 0.02}, "scheduler": {"type": "none"},
          "sampler": {"type": "random", "seed": 11}, "budget": {"num_trials": 6, "max_concurrent_trials": 1}}  # one at a time: the order is the searcher's


def finished(client: Client, sid: str) -> dict[str, Any]:
    s = wait_until(lambda: (s := client.study(sid))["status"] in ("completed", "failed", "cancelled") and s, 300, f"study {sid} to finish", interval=0.5)
    assert s["status"] == "completed", s
    return s


@pytest.mark.ray
def test_refine_runs_the_parents_best_first_then_extend_continues_it(api: LocalServer, caviar_data_dir: Path) -> None:
    with api.client() as client:
        parent = client.submit(COARSE)["id"]
        finished(client, parent)
        best = client.best(parent, k=2)["items"]

        dry = subprocess.run([CAVIAR, "refine", parent, "--top-k", "2", "--num-trials", "4", "--dry-run", "--url", api.url],
                             capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.startswith(("x: [0, 1] -> [", "y: [0, 1] -> [")), dry.stdout
        made = subprocess.run([CAVIAR, "refine", parent, "--top-k", "2", "--num-trials", "4", "--url", api.url],
                              capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        child = made.stdout.split()[1]
        s = finished(client, child)
        assert s["parent_id"] == parent and s["definition"]["warm_start"] == {"study": parent, "top_k": 2}
        trials = sorted(client.trials(child), key=lambda t: t["started_at"])
        assert len(trials) == 4
        first = [{k: t["config"][k] for k in ("x", "y")} for t in trials[:2]]
        assert first == [{k: b["config"][k] for k in ("x", "y")} for b in best]  # the parent's best ran first, in order
        space = s["definition"]["search_space"]
        for t in trials:  # and every trial stayed in the narrowed space
            assert all(space[k]["low"] <= t["config"][k] <= space[k]["high"] for k in ("x", "y"))

        ext = subprocess.run([CAVIAR, "extend", child, "--num-trials", "3", "--url", api.url], capture_output=True, text=True, timeout=60)
        assert ext.returncode == 0 and "7 trials in all" in ext.stdout, (ext.stdout, ext.stderr)
        s = finished(client, child)
        after = client.trials(child)
        assert len(after) == 7 and s["trial_counts"]["completed"] == 7
        assert {t["trial_id"] for t in trials} <= {t["trial_id"] for t in after}  # the first run's trials are kept
        assert s["extended_at"] and client.best(child, k=1)["test_metrics"] is None  # busy_work has no model: no test metrics
    # one Optuna study across both runs: the sampler saw all 7 (the extension continued its history)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(optuna_journal(caviar_data_dir, child))))
    study = optuna.load_study(study_name=f"caviar-{child}", storage=storage)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 7
