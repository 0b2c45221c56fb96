"""Crash recovery through the real stack, with real processes and real signals: kill -9 of the API,
of a trial's worker, of the study's driver, and a stop of the whole Ray head, all in one study on a
Ray head of its own; then a study with a diverging configuration, and SIGTERM of the API mid-study.

What must hold: nothing measured is lost, the study resumes from Tune's saved state (resume count
visible), it ends with exactly ``num_trials`` trials and no trial that had a checkpoint is
restarted from scratch.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest
from optuna.storages.journal import JournalFileBackend

from service.jobs import JobState
from service.local import LocalHead, LocalServer, wait_until
from service.runner.optuna_storage import optuna_journal
from tests.conftest import alive_trial_actors

pytestmark = [pytest.mark.ray, pytest.mark.slow]
EPOCHS, TRIALS = 10, 4


def study(api: LocalServer, sid: str) -> dict[str, Any]:
    return api.client().study(sid)


def wait_for(fn: Any, timeout: float, every: float = 0.5) -> Any:
    return wait_until(fn, timeout, "the condition", interval=every)


@pytest.fixture
def own_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHead]:
    head = LocalHead(tmp_path_factory.mktemp("ray-own"), num_cpus=2)
    head.start()
    try:
        yield head
    finally:
        head.stop()


def measured(api: LocalServer, sid: str) -> set[tuple[str, int]]:
    """Every (trial, epoch) the store has for the study, read over the API."""
    client, out = api.client(), set()
    for t in client.trials(sid):
        out |= {(t["trial_id"], int(h["epoch"])) for h in client.trial(sid, t["trial_id"])["history"]}
    return out


def max_epoch(api: LocalServer, sid: str) -> int:
    return max([t["epochs"] for t in api.client().trials(sid)] or [0])


def tune_epochs(data_dir: Path, sid: str) -> dict[str, list[int]]:
    """The epochs each trial reported to Tune, in order, from Tune's own result.json files (appended
    across restores): a trial restarted from scratch shows epoch 1 again."""
    out: dict[str, list[int]] = {}
    for f in (data_dir / "ray_results" / sid).glob("*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = [int(r["epoch"]) for r in rows]
    return out


def study_row(data: Path, sid: str) -> tuple[str, int]:
    with sqlite3.connect(data / "caviar.db") as db:
        return db.execute("SELECT status, resumes FROM caviar_studies WHERE id = ?", (sid,)).fetchone()  # type: ignore[no-any-return]


def drivers(sid: str, data: Path) -> list[psutil.Process]:
    """The study's driver processes (the Python one, not the shell Ray's job runs it under): a job of
    its own (``service.runner ID``) or the warm driver it was handed to (``--standby JOB``)."""
    with sqlite3.connect(data / "caviar.db") as db:
        (job,) = db.execute("SELECT ray_job_id FROM caviar_studies WHERE id = ?", (sid,)).fetchone()
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd[1:4] == ["-m", "service.runner", sid] or (job and cmd[1:5] == ["-m", "service.runner", "--standby", job]):
            found.append(p)
    return found


def test_kill_api_trial_driver_and_ray_head_mid_study_loses_nothing(own_head: LocalHead, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "datasets").mkdir(parents=True)
    head = own_head
    api = LocalServer(data, head).start()
    try:
        definition = {
            "name": "crashy", "trainable": "cnn_bn_softmax", "dataset": {"name": "mnist1d"},
            "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "fixed": {"epochs": EPOCHS, "channels": 32, "batch_size": 16, "checkpoint_every": 1}, "scheduler": {"type": "none"},
            "budget": {"num_trials": TRIALS, "max_concurrent_trials": 2, "max_failures": 2},
        }
        sid = api.client().submit(definition)["id"]

        # 1. kill -9 the API: the study keeps running on Ray; every measured epoch is there afterwards
        wait_for(lambda: max_epoch(api, sid) >= 2, timeout=240)
        before = measured(api, sid)
        job = study(api, sid)["ray_job_id"]
        api.kill()
        api.start()
        s = study(api, sid)
        assert s["status"] == "running" and s["ray_job_id"] == job and s["resumes"] == 0
        assert before <= measured(api, sid)
        wait_for(lambda: len(measured(api, sid)) > len(before) + 2, timeout=120)  # and it goes on

        # 2. kill -9 one trial's worker: Tune retries the trial from its last checkpoint
        actors = alive_trial_actors(head)
        assert actors, "no trial actor alive"
        psutil.Process(int(actors[0].pid)).send_signal(signal.SIGKILL)
        wait_for(lambda: any(t["retries"] >= 1 for t in api.client().trials(sid)), timeout=60)

        # 3. kill -9 the study's driver: the service notices and resumes from Tune's saved state
        wait_for(lambda: len(study(api, sid)["trial_counts"]) and max_epoch(api, sid) >= 3, timeout=120)
        (driver,) = drivers(sid, data)
        driver.send_signal(signal.SIGKILL)
        s = wait_for(lambda: (x := study(api, sid))["resumes"] == 1 and x["ray_job_id"] not in (None, job) and x, timeout=60)
        assert s["status"] == "running"
        job = s["ray_job_id"]
        wait_for(lambda: drivers(sid, data), timeout=60)
        resumed_at = time.time()

        # 4. the whole Ray head goes down (kill -9 of its processes and of the driver, as a crash of
        # the machine's Ray would), and the API with it; start both again: the study resumes the same way
        wait_for(lambda: study(api, sid)["trial_counts"]["running"] >= 1, timeout=120)
        # the resumed driver has saved Tune's experiment state at least once (every 2 s)
        wait_for(lambda: any(f.stat().st_mtime > resumed_at for f in (data / "ray_results" / sid).glob("experiment_state*.json")), timeout=60)
        api.kill()
        own_head.crash()
        for p in drivers(sid, data):
            p.kill()
        assert study_row(data, sid) == ("running", 1)  # not finished: there is work left to resume
        own_head.start()
        api.start()
        s = wait_for(lambda: (x := study(api, sid))["resumes"] == 2 and x, timeout=120)

        # the end: exactly num_trials trials, all measured to the last epoch, no duplicates
        s = wait_for(lambda: (x := study(api, sid))["status"] in ("completed", "failed") and x, timeout=420, every=2)
        assert s["status"] == "completed", s["error"]
        assert s["resumes"] == 2
        trials = api.client().trials(sid)
        assert len(trials) == TRIALS and len({t["trial_id"] for t in trials}) == TRIALS
        assert all(t["state"] == "completed" and t["epochs"] == EPOCHS for t in trials), trials
        for t in trials:
            history = api.client().trial(sid, t["trial_id"])["history"]
            assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
        assert sum(t["retries"] for t in trials) >= 1
        # no trial that had a checkpoint started again from scratch: in Tune's own log of results,
        # epoch 1 is reported once per trial (every epoch is checkpointed)
        seen = tune_epochs(data, sid)
        assert set(seen) == {t["trial_id"] for t in trials}
        for trial_id, epochs in seen.items():
            assert epochs.count(1) == 1, (trial_id, epochs)
            assert epochs[-1] == EPOCHS
        best = api.client().best(sid, 1)
        assert best["test_metrics"] and best["test_metrics"]["test_accuracy"] > 0.3
        with sqlite3.connect(data / "caviar.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # the sampler's Optuna study (a journal file) went through both resumes: every stored trial is
        # a COMPLETE Optuna trial with the same lr (trials orphaned by a crash may stay RUNNING there)
        journal = optuna.storages.JournalStorage(JournalFileBackend(str(optuna_journal(data, sid))))
        complete = [t for t in optuna.load_study(study_name=f"caviar-{sid}", storage=journal).trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert sorted(t.params["lr"] for t in complete) == sorted(t["config"]["lr"] for t in trials)
    finally:
        api.stop()


def test_a_diverging_configuration_fails_alone_and_sigterm_leaves_the_study_running(api: LocalServer, ray_head: LocalHead) -> None:
    definition = {
        "name": "nan", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"},
        "search_space": {"lr": {"type": "categorical", "choices": [0.01, 10.0]}},
        "fixed": {"epochs": 3, "optimizer": "momentum", "momentum": 0.99, "bn_placement": "none", "depth": 4},
        "scheduler": {"type": "none"}, "sampler": {"type": "grid"},
        "budget": {"num_trials": 2, "max_concurrent_trials": 2},
    }
    sid = api.client().submit(definition)["id"]
    s = wait_for(lambda: (x := study(api, sid))["status"] in ("completed", "failed") and x, timeout=180)
    assert s["status"] == "completed", s["error"]
    by_lr = {t["config"]["lr"]: t for t in api.client().trials(sid)}
    assert by_lr[10.0]["state"] == "failed" and "diverged" in by_lr[10.0]["error"]
    assert by_lr[0.01]["state"] == "completed"
    assert s["best"]["config"]["lr"] == 0.01

    # SIGTERM the API mid-study: it drains and exits; the study runs on in Ray meanwhile
    long = {**definition, "name": "long", "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}},
            "fixed": {"epochs": 400}, "sampler": {"type": "random"}}
    sid = api.client().submit(long)["id"]
    wait_for(lambda: max_epoch(api, sid) >= 1, timeout=120)
    assert api.proc is not None
    api.proc.send_signal(signal.SIGTERM)
    assert api.proc.wait(timeout=30) == 0
    with sqlite3.connect(api.data_dir / "caviar.db") as db:
        job_id, = db.execute("SELECT ray_job_id FROM caviar_studies WHERE id = ?", (sid,)).fetchone()

        def epochs() -> int:
            return int(db.execute("SELECT COALESCE(SUM(epochs), 0) FROM caviar_trials WHERE study_id = ?", (sid,)).fetchone()[0])

        seen = epochs()
        assert ray_head.jobs().status(job_id) == JobState.RUNNING
        wait_for(lambda: epochs() > seen, timeout=60)  # the driver keeps writing with no API up
    api.start()
    assert api.client().cancel(sid)["status"] == "cancelled"
    wait_for(lambda: all(t["state"] != "running" for t in api.client().trials(sid)), timeout=30)
