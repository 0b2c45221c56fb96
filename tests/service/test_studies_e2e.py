"""Studies through the whole stack: REST over HTTP, one Ray job per study, Tune + Optuna + ASHA, SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
import yaml
from optuna.storages.journal import JournalFileBackend

from service.store import optuna_journal
from tests.conftest import Api, RayHead, fresh_postgres_database

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def wait_for(fn: Any, timeout: float, every: float = 1.0) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def study(api: Api, sid: str) -> dict[str, Any]:
    return httpx.get(f"{api.url}/v1/studies/{sid}", timeout=30).json()


def finished(api: Api, sid: str) -> dict[str, Any] | None:
    s = study(api, sid)
    return s if s["status"] in ("completed", "failed", "cancelled") else None


def test_a_12_trial_tpe_asha_study_on_digits(api: Api, ray_head: RayHead) -> None:
    definition = yaml.safe_load((ROOT / "examples" / "digits_quick.yaml").read_text())
    assert definition["budget"]["num_trials"] == 12 and definition["sampler"]["type"] == "tpe"
    r = httpx.post(f"{api.url}/v1/studies", json=definition, timeout=30)
    assert r.status_code == 201 and r.json()["status"] == "queued"
    sid = r.json()["id"]
    s = wait_for(lambda: finished(api, sid), timeout=600, every=2)
    assert s["status"] == "completed", s
    counts = s["trial_counts"]
    assert sum(counts.values()) == 12 and counts["failed"] == 0
    assert counts["stopped_early"] >= 1, counts
    assert s["best"]["value"] >= 0.95
    # the study is a Ray job, and Ray's Jobs API says it succeeded
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head.dashboard)
    wait_for(lambda: str(client.get_job_status(s["ray_job_id"])) == "SUCCEEDED", timeout=30)  # the driver exits after marking
    assert s["dashboard_url"].endswith(f"/#/jobs/{s['ray_job_id']}")
    trials = httpx.get(f"{api.url}/v1/studies/{sid}/trials").json()
    for t in trials:
        detail = httpx.get(f"{api.url}/v1/studies/{sid}/trials/{t['trial_id']}").json()
        assert [h["epoch"] for h in detail["history"]] == list(range(1, t["epochs"] + 1))
        assert t["epochs"] == 8 if t["state"] == "completed" else t["epochs"] < 8
    best = httpx.get(f"{api.url}/v1/studies/{sid}/best", params={"k": 3}).json()
    values = [b["value"] for b in best["items"]]
    assert values == sorted(values, reverse=True) and values[0] == s["best"]["value"]
    assert 0.9 <= best["test_metrics"]["test_accuracy"] <= 1.0
    # the Optuna study in its journal: same trials, ASHA-stopped ones as PRUNED (with intermediate values)
    journal = optuna_journal(api.data_dir, sid)
    ot = optuna.load_study(study_name=f"caviar-{sid}", storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))
    states = [t.state for t in ot.trials]
    assert len(ot.trials) == 12
    assert states.count(optuna.trial.TrialState.PRUNED) == counts["stopped_early"]
    assert states.count(optuna.trial.TrialState.COMPLETE) == counts["completed"]
    assert all(t.intermediate_values for t in ot.trials if t.state == optuna.trial.TrialState.PRUNED)
    # a finished study cannot be cancelled
    assert httpx.post(f"{api.url}/v1/studies/{sid}/cancel").status_code == 409


def _epochs(api: Api, sid: str) -> int:
    return sum(t["epochs"] for t in httpx.get(f"{api.url}/v1/studies/{sid}/trials", timeout=30).json())


def test_restart_api_mid_study_then_cancel(api: Api, ray_head: RayHead) -> None:
    definition = {
        "name": "long-cnn", "trainable": "cnn_bn_softmax", "dataset": {"name": "mnist1d"},
        "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "fixed": {"epochs": 200, "channels": 16}, "scheduler": {"type": "none"},
        "budget": {"num_trials": 4, "max_concurrent_trials": 2},
    }
    sid = httpx.post(f"{api.url}/v1/studies", json=definition, timeout=30).json()["id"]
    wait_for(lambda: _epochs(api, sid) >= 2, timeout=180)
    api.kill()  # kill -9 the API process while the study runs on Ray
    api.start()
    s = study(api, sid)
    assert s["status"] == "running"
    seen = _epochs(api, sid)
    wait_for(lambda: _epochs(api, sid) > seen + 1, timeout=120)  # trials keep arriving after the restart
    t0 = time.time()
    r = httpx.post(f"{api.url}/v1/studies/{sid}/cancel", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head.dashboard)
    wait_for(lambda: str(client.get_job_status(s["ray_job_id"])) == "STOPPED", timeout=30)

    def no_trial_actors() -> bool:
        from ray.util.state import list_actors

        alive = list_actors(address=ray_head.gcs_address, filters=[("state", "=", "ALIVE")])
        return not [a for a in alive if "ImplicitFunc" in (a.class_name or "")]

    wait_for(no_trial_actors, timeout=60)
    assert time.time() - t0 < 60
    frozen = _epochs(api, sid)
    assert frozen > seen
    time.sleep(3)
    assert _epochs(api, sid) == frozen  # nothing runs any more; what was measured stays readable
    assert study(api, sid)["status"] == "cancelled"
    assert httpx.post(f"{api.url}/v1/studies/{sid}/cancel").status_code == 409


def test_a_study_on_postgresql_with_optuna_in_the_database(ray_head: RayHead, tmp_path: Path) -> None:
    """Caviar's store and Optuna's tables both on PostgreSQL (CAVIAR_OPTUNA_STORAGE=database)."""
    with fresh_postgres_database() as url:
        data = tmp_path / "data"
        (data / "datasets").mkdir(parents=True)
        server = Api(data, ray_head, database_url=url, env={"CAVIAR_OPTUNA_STORAGE": "database"})
        server.start()
        try:
            definition = {
                "name": "pg", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"},
                "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
                "fixed": {"epochs": 3}, "sampler": {"type": "tpe", "seed": 1},
                "scheduler": {"type": "none"}, "budget": {"num_trials": 3, "max_concurrent_trials": 2},
            }
            sid = httpx.post(f"{server.url}/v1/studies", json=definition, timeout=30).json()["id"]
            s = wait_for(lambda: finished(server, sid), timeout=300, every=1)
            assert s["status"] == "completed", s
            ot = optuna.load_study(study_name=f"caviar-{sid}", storage=url.replace("postgresql://", "postgresql+psycopg://"))
            assert [t.state for t in ot.trials] == [optuna.trial.TrialState.COMPLETE] * 3
            stored = {t["config"]["lr"] for t in httpx.get(f"{server.url}/v1/studies/{sid}/trials").json()}
            assert {t.params["lr"] for t in ot.trials} == stored
            assert not optuna_journal(data, sid).exists()
        finally:
            server.stop()


def _cli(api: Api, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAVIAR_URL": api.url}
    return subprocess.run([str(Path(sys.executable).parent / "caviar"), *args], capture_output=True, text=True, env=env, timeout=600)


def test_cli_wait_and_fail_under_exit_codes(api: Api, tmp_path: Path) -> None:
    tiny = {
        "name": "cli-tiny", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"},
        "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.05, "log": True}},
        "fixed": {"epochs": 3}, "scheduler": {"type": "none"}, "budget": {"num_trials": 2, "max_concurrent_trials": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    ok = _cli(api, "submit", str(path), "--wait", "--fail-under", "val_accuracy=0.5")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "best trial" in ok.stdout
    missed = _cli(api, "submit", str(path), "--wait", "--fail-under", "val_accuracy=1.01")
    assert missed.returncode == 1 and "misses the threshold" in missed.stderr
    (api.data_dir / "datasets" / "corrupt.npz").write_bytes(b"not an npz")  # every trial will raise
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({**tiny, "dataset": {"name": "file", "path": "corrupt.npz"}, "budget": {"num_trials": 1, "max_failures": 0}}))
    failed = _cli(api, "submit", str(broken), "--wait")
    assert failed.returncode == 2 and failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1
    failed_id = failed.stdout.split()[1]
    (trial,) = httpx.get(f"{api.url}/v1/studies/{failed_id}/trials").json()
    assert trial["state"] == "failed"
    # the exception itself, not only where its traceback lies
    assert not trial["error"].startswith("the trial raised an error") and "Error" in trial["error"], trial["error"]
    bad = _cli(api, "submit", str(path), "--wait", "--fail-under", "accuracy")
    assert bad.returncode == 2 and "expected METRIC=VALUE" in bad.stderr
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(yaml.safe_dump({**tiny, "trainable": "nope"}))
    rejected = _cli(api, "submit", str(invalid))
    assert rejected.returncode == 2 and "trainable: unknown trainable 'nope'" in rejected.stderr
