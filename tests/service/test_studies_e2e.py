"""Studies through the whole stack: REST over HTTP, one Ray job per study, Tune + Optuna + ASHA, SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import optuna
import pytest
import yaml
from optuna.storages.journal import JournalFileBackend

from service.client import FINISHED, CaviarError, Client
from service.jobs import JobState
from service.local import LocalHead, LocalServer, wait_until
from service.runner.optuna_storage import optuna_journal
from service.store import Store
from tests.conftest import alive_trial_actors, fresh_postgres_database

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def finished(client: Client, sid: str) -> dict[str, Any] | None:
    s = client.study(sid)
    return s if s["status"] in FINISHED else None


def test_a_12_trial_tpe_asha_study_on_digits(api: LocalServer, ray_head: LocalHead) -> None:
    client = api.client()
    definition = yaml.safe_load((ROOT / "examples" / "digits_quick.yaml").read_text())
    assert definition["budget"]["num_trials"] == 12 and definition["sampler"]["type"] == "tpe"
    created = client.submit(definition)
    assert created["status"] == "queued"
    sid = created["id"]
    s = wait_until(lambda: finished(client, sid), 600, "the study to finish", interval=1)
    assert s["status"] == "completed", s
    counts = s["trial_counts"]
    assert sum(counts.values()) == 12 and counts["failed"] == 0
    assert counts["stopped_early"] >= 1, counts
    assert s["best"]["value"] >= 0.95
    # the study is a Ray job, and Ray's Jobs API says it succeeded (the driver exits after marking)
    wait_until(lambda: ray_head.jobs().status(s["ray_job_id"]) == JobState.SUCCEEDED, 30, "the job to succeed")
    assert s["dashboard_url"].endswith(f"/#/jobs/{s['ray_job_id']}")
    for t in client.trials(sid):
        detail = client.trial(sid, t["trial_id"])
        assert [h["epoch"] for h in detail["history"]] == list(range(1, t["epochs"] + 1))
        assert t["epochs"] == 8 if t["state"] == "completed" else t["epochs"] < 8
    assert len({t["node"] for t in client.trials(sid)}) == 1 and client.trials(sid)[0]["node"]  # the head is the one node
    best = client.best(sid, 3)
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
    # each trial's value at every ASHA rung it reached (1, 3) and at its end (8): what mf_tpe compares
    for ot_trial in ot.trials:
        [t] = [t for t in client.trials(sid) if all(t["config"].get(k) == v for k, v in ot_trial.params.items())]
        history = {h["epoch"]: h["val_accuracy"] for h in client.trial(sid, t["trial_id"])["history"]}
        assert ot_trial.intermediate_values == {e: pytest.approx(history[e]) for e in (1, 3, 8) if e <= t["epochs"]}
    with pytest.raises(CaviarError) as no:  # a finished study cannot be cancelled
        client.cancel(sid)
    assert no.value.status == 409


def test_a_plug_in_trainable_declares_and_optimises_its_own_metric(api: LocalServer) -> None:
    """softmax_f1 (tests/plugins, found through its entry point) reports val_f1; a study maximises it."""
    client = api.client()
    listed = {t["name"]: t for t in client.trainables()}
    assert listed["softmax_f1"]["metrics"][0] == "val_f1"
    definition = {
        "name": "f1", "trainable": "softmax_f1", "dataset": {"name": "digits"},
        "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True}},
        "fixed": {"epochs": 6}, "objective": {"metric": "val_f1", "mode": "max"},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "budget": {"num_trials": 6, "max_concurrent_trials": 2},
    }
    sid = client.submit(definition)["id"]
    s = wait_until(lambda: finished(client, sid), 300, "the plug-in study to finish", interval=1)
    assert s["status"] == "completed", s
    trials = client.trials(sid)
    assert len(trials) == 6 and all(t["state"] != "failed" for t in trials)
    # the objective is the plug-in's own metric: stored per epoch, folded into best_value, ranked by /best
    f1s = {t["trial_id"]: max(h["val_f1"] for h in client.trial(sid, t["trial_id"])["history"]) for t in trials}
    for t in trials:
        assert t["best_value"] == pytest.approx(f1s[t["trial_id"]])
    assert s["best"]["value"] == pytest.approx(max(f1s.values()))
    ot = optuna.load_study(study_name=f"caviar-{sid}",
                           storage=optuna.storages.JournalStorage(JournalFileBackend(str(optuna_journal(api.data_dir, sid)))))
    complete = [t for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(0.0 <= float(t.value) <= 1.0 for t in complete)  # Optuna was told F1 values
    with pytest.raises(CaviarError) as bad:  # a metric the trainable does not report is refused, naming it
        client.submit({**definition, "objective": {"metric": "val_confidence", "mode": "max"}})
    assert bad.value.status == 422 and bad.value.field == "objective.metric" and "val_f1" in bad.value.detail


def test_restart_api_mid_study_then_cancel(api: LocalServer, ray_head: LocalHead) -> None:
    client = api.client()
    store = Store(f"sqlite:///{api.data_dir / 'caviar.db'}")

    def epochs(sid: str) -> int:
        return sum(t.epochs for t in store.trials.for_study(sid))

    definition = {
        "name": "long-cnn", "trainable": "cnn_bn_softmax", "dataset": {"name": "mnist1d"},
        "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "fixed": {"epochs": 200, "channels": 16}, "scheduler": {"type": "none"},
        "budget": {"num_trials": 4, "max_concurrent_trials": 2},
    }
    sid = client.submit(definition)["id"]
    wait_until(lambda: epochs(sid) >= 2, 180, "two epochs")
    api.kill()  # kill -9 the API process while the study runs on Ray
    api.start()
    s = client.study(sid)
    assert s["status"] == "running"
    seen = epochs(sid)
    wait_until(lambda: epochs(sid) > seen + 1, 120, "epochs after the restart")  # trials keep arriving
    assert client.cancel(sid)["status"] == "cancelled"
    wait_until(lambda: ray_head.jobs().status(s["ray_job_id"]) == JobState.STOPPED, 30, "the job to stop")

    wait_until(lambda: not alive_trial_actors(ray_head), 60, "the trial actors to stop")
    frozen = epochs(sid)  # the driver and its trials are gone: nothing writes any more
    assert frozen > seen
    # what was measured stays readable through the API (once its read cache has caught up)
    wait_until(lambda: sum(t["epochs"] for t in client.trials(sid)) == frozen, 10, "the API to show every measured epoch")
    assert client.study(sid)["status"] == "cancelled"
    with pytest.raises(CaviarError) as no:
        client.cancel(sid)
    assert no.value.status == 409


def test_a_study_on_postgresql_with_optuna_in_the_database(ray_head: LocalHead, tmp_path: Path) -> None:
    """Caviar's store and Optuna's tables both on PostgreSQL (CAVIAR_OPTUNA_STORAGE=database)."""
    with fresh_postgres_database() as url:
        data = tmp_path / "data"
        server = LocalServer(data, ray_head, database_url=url, env={"CAVIAR_OPTUNA_STORAGE": "database"}).start()
        try:
            client = server.client()
            definition = {
                "name": "pg", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"},
                "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
                "fixed": {"epochs": 3}, "sampler": {"type": "tpe", "seed": 1},
                "scheduler": {"type": "none"}, "budget": {"num_trials": 3, "max_concurrent_trials": 2},
            }
            sid = client.submit(definition)["id"]
            s = wait_until(lambda: finished(client, sid), 300, "the study to finish", interval=1)
            assert s["status"] == "completed", s
            ot = optuna.load_study(study_name=f"caviar-{sid}", storage=url.replace("postgresql://", "postgresql+psycopg://"))
            assert [t.state for t in ot.trials] == [optuna.trial.TrialState.COMPLETE] * 3
            assert {t.params["lr"] for t in ot.trials} == {t["config"]["lr"] for t in client.trials(sid)}
            assert not optuna_journal(data, sid).exists()
        finally:
            server.stop()


def _cli(api: LocalServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAVIAR_URL": api.url}
    return subprocess.run([str(Path(sys.executable).parent / "caviar"), *args], capture_output=True, text=True, env=env, timeout=600)


def test_cli_wait_and_fail_under_exit_codes(api: LocalServer, tmp_path: Path) -> None:
    tiny = {
        "name": "cli-tiny", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"},
        "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.05, "log": True}},
        "fixed": {"epochs": 3}, "scheduler": {"type": "none"}, "budget": {"num_trials": 2, "max_concurrent_trials": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    summary, junit = tmp_path / "summary.md", tmp_path / "junit.xml"
    ok = _cli(api, "submit", str(path), "--wait", "--fail-under", "val_accuracy=0.5", "--summary-md", str(summary), "--junit", str(junit))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "best trial" in ok.stdout
    ok_id = ok.stdout.split()[1]
    # not a terminal: plain progress lines, whole, the last one the end
    lines = [x for x in ok.stdout.splitlines() if x.startswith(f"study {ok_id} (cli-tiny) ")]
    assert lines and lines[-1].startswith(f"study {ok_id} (cli-tiny) completed: 2/2 trials done (2 completed, 0 stopped early, 0 failed)")
    assert "…" not in ok.stdout and len(lines) == len(set(lines))  # one line per change
    md = summary.read_text()
    assert md.startswith("## ✅ Caviar study `cli-tiny`: completed") and "| best val_accuracy (max) | **" in md
    assert "| val_accuracy >= 0.5 | ✅ pass |" in md and "held-out test | test_loss=" in md
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "0"
    missed = _cli(api, "submit", str(path), "--wait", "--fail-under", "val_accuracy=1.01", "--baseline", ok_id, "--max-regression", "1",
                  "--junit", str(junit))
    assert missed.returncode == 1 and "misses the threshold" in missed.stderr
    cases = {c.get("name"): c.find("failure") for c in ElementTree.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"study completed", "val_accuracy >= 1.01", f"val_accuracy within 1 of baseline {ok_id}"}
    assert cases["val_accuracy >= 1.01"] is not None and cases["study completed"] is None
    assert cases[f"val_accuracy within 1 of baseline {ok_id}"] is None
    # a table that is fine at submission and broken by the time trials read it (replaced meanwhile,
    # as a careless upload would): every trial raises
    table = api.data_dir / "datasets" / "changing.csv"
    table.write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({**tiny, "dataset": {"name": "file", "path": "changing.csv"}, "budget": {"num_trials": 2, "max_failures": 0}}))
    submitted = api.client().submit(broken.read_text(), idempotency_key="same-study")
    table.write_text("a,label\n" + "".join(f"w{i},{i % 2}\n" for i in range(40)))
    failed = _cli(api, "submit", str(broken), "--wait", "--idempotency-key", "same-study")
    assert failed.returncode == 2 and failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1
    # a study whose every trial failed is failed, and says why: the most common trial error
    assert "failed: all 2 trials failed; the most common error (2 of 2): ValueError" in failed.stderr, failed.stderr
    failed_id = failed.stdout.split()[1]
    assert failed_id == submitted["id"]  # the CLI followed the study submitted before the file changed
    assert api.client().study(failed_id)["status"] == "failed"
    trials = api.client().trials(failed_id)
    assert [t["state"] for t in trials] == ["failed", "failed"]
    # the exception itself, not only where its traceback lies
    assert all(t["error"].startswith("ValueError") and "full traceback in" in t["error"] for t in trials), trials
    bad = _cli(api, "submit", str(path), "--wait", "--fail-under", "accuracy")
    assert bad.returncode == 2 and "expected METRIC=VALUE" in bad.stderr
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(yaml.safe_dump({**tiny, "trainable": "nope"}))
    rejected = _cli(api, "submit", str(invalid))
    assert rejected.returncode == 2 and "trainable: unknown trainable 'nope'" in rejected.stderr
