"""Panda mode on the session's Ray head through `caviar serve`: a person changes a running trial's
learning rate; the trial trains with it from the next epoch on and records the intervention
(epoch, who, what). Validation of adjustments over HTTP without Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.local import LocalServer, wait_until
from tests.service.fakes import GOOD, FakeJobs, serve_in_thread, settings_for

CAVIAR = str(Path(sys.executable).parent / "caviar")
PANDA = {"name": "babysit", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"}, "mode": "panda",
         "search_space": {"lr": {"type": "categorical", "choices": [0.05]}},
         "fixed": {"epochs": 400, "optimizer": "momentum", "batch_size": 64}, "budget": {"num_trials": 1, "max_concurrent_trials": 1}}


@pytest.mark.ray
def test_a_person_lowers_the_learning_rate_of_a_running_trial(api: LocalServer) -> None:
    with api.client() as client:
        sid = client.submit(PANDA)["id"]
        assert client.study(sid)["definition"]["scheduler"]["type"] == "none"
        trial = wait_until(lambda: next((t for t in client.trials(sid) if t["state"] == "running" and t["epochs"] >= 2), None), 180,
                           "the panda trial to run two epochs", interval=0.3)["trial_id"]
        done = subprocess.run([CAVIAR, "adjust", sid, trial, "lr=0.001", "--url", api.url], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "lr=0.001" in done.stdout, (done.stdout, done.stderr)
        applied = wait_until(lambda: next((i for i in client.trial(sid, trial)["interventions"] if i["after_epoch"] is not None), None), 60,
                             "the trainable to apply the change", interval=0.3)
        assert applied["changes"] == {"lr": 0.001} and applied["by"] == "local"
        k = applied["after_epoch"]
        wait_until(lambda: client.trial(sid, trial)["epochs"] >= k + 2, 60, "two epochs after the change", interval=0.3)
        history = client.trial(sid, trial)["history"]
        lrs = {h["epoch"]: h["lr"] for h in history}
        assert all(lrs[e] == pytest.approx(0.05) for e in range(1, k + 1))  # before: as configured
        assert lrs[k + 1] == pytest.approx(0.001) and lrs[k + 2] == pytest.approx(0.001)  # from the next epoch on
        kinds = [kind for kind, _, _ in _events_until(client, sid, "adjusted")]
        assert "adjust_requested" in kinds and "adjusted" in kinds
        client.cancel(sid)

        # "try something else from here": a new trial from epoch 2's checkpoint, with another learning rate
        last = client.trial(sid, trial)["epochs"]
        r = httpx.post(f"{api.url}/v1/studies/{sid}/trials/{trial}/fork", json={"from_epoch": last + 50, "changes": {"lr": 0.01}})
        assert r.status_code == 409 and f"no checkpoint at epoch {last + 50}" in r.json()["detail"]
        r = httpx.post(f"{api.url}/v1/studies/{sid}/trials/{trial}/fork", json={"from_epoch": 2, "changes": {"width": 8}})
        assert r.status_code == 422 and r.json()["field"] == "width"
        r = httpx.post(f"{api.url}/v1/studies/{sid}/trials/{trial}/fork", json={"from_epoch": 2, "changes": {"lr": 0.01}})
        assert r.status_code == 201, r.text
        forked = r.json()
        assert forked["parent_id"] == sid and forked["definition"]["fork"]["epoch"] == 2 and forked["definition"]["mode"] == "panda"
        fid = forked["id"]
        child = wait_until(lambda: next((t for t in client.trials(fid) if t["epochs"] >= 4), None), 180, "the forked trial to train", interval=0.3)
        detail = client.trial(fid, child["trial_id"])
        assert [h["epoch"] for h in detail["history"]][:2] == [3, 4]  # it went on from epoch 2's checkpoint
        assert all(h["lr"] == pytest.approx(0.01) for h in detail["history"])
        assert [(i["changes"], i["after_epoch"]) for i in detail["interventions"]] == [({"lr": 0.01}, 2)]
        client.cancel(fid)


def _events_until(client: object, sid: str, kind: str) -> list[tuple[str, str, dict]]:
    seen = []
    for event, ident, data in client.events(sid, last_event_id="0.0"):  # type: ignore[attr-defined]  # from the log's start
        seen.append((event, ident, data))
        if event == kind:
            break
    return seen


def test_adjustments_are_checked_by_name_and_rule(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        r = client.post("/v1/studies", json={**PANDA, "scheduler": {"type": "asha"}})
        assert r.status_code == 422 and r.json()["field"] == "scheduler.type"
        r = client.post("/v1/studies", json={**PANDA, "budget": {"num_trials": 9}})
        assert r.status_code == 422 and r.json()["field"] == "budget.num_trials"
        caviar = client.post("/v1/studies", json=GOOD).json()["id"]
        panda = client.post("/v1/studies", json=PANDA).json()["id"]
        busy = client.post("/v1/studies", json={**PANDA, "trainable": "busy_work", "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
                                                 "fixed": {"epochs": 5}}).json()["id"]
        for sid in (caviar, panda, busy):
            store.studies.update(sid, status="running")
            store.trials.upsert(sid, "t1", config={"lr": 0.05}, state="running")
        r = client.post(f"/v1/studies/{caviar}/trials/t1/adjust", json={"lr": 0.01})
        assert r.status_code == 422 and r.json()["field"] == "mode"
        r = client.post(f"/v1/studies/{busy}/trials/t1/adjust", json={"x": 0.5})
        assert r.status_code == 422 and r.json()["field"] == "trainable" and "busy_work" in r.json()["detail"]  # declares nothing adjustable
        r = client.post(f"/v1/studies/{panda}/trials/t1/adjust", json={"width": 64})
        assert r.status_code == 422 and r.json()["field"] == "width" and "not adjustable" in r.json()["detail"]
        r = client.post(f"/v1/studies/{panda}/trials/t1/adjust", json={"dropout": 1.5})
        assert r.status_code == 422 and r.json()["field"] == "dropout"
        assert client.post(f"/v1/studies/{panda}/trials/nope/adjust", json={"lr": 0.01}).status_code == 404
        ok = client.post(f"/v1/studies/{panda}/trials/t1/adjust", json={"lr": 0.01, "dropout": 0.2})
        assert ok.status_code == 202 and ok.json()["after_epoch"] is None
        detail = client.get(f"/v1/studies/{panda}/trials/t1").json()
        assert [i["changes"] for i in detail["interventions"]] == [{"lr": 0.01, "dropout": 0.2}]
        store.trials.upsert(panda, "t1", state="completed")
        r = client.post(f"/v1/studies/{panda}/trials/t1/adjust", json={"lr": 0.01})
        assert r.status_code == 409 and "only a running trial" in r.json()["detail"]
