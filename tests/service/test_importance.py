"""GET /v1/studies/{id}/importance over HTTP (Ray faked): fANOVA ranks the parameter the objective
depends on first, counts completed and stopped-early trials only, and refuses with too few."""

from __future__ import annotations

import random
from pathlib import Path

import httpx

from service.api.app import create_app
from tests.service.fakes import GOOD, FakeJobs, serve_in_thread, settings_for

SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}, "dropout": {"type": "float", "low": 0.0, "high": 0.5},
         "optimizer": {"type": "categorical", "choices": ["adam", "momentum"]}}


def test_importance_ranks_what_the_objective_depends_on(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        sid = client.post("/v1/studies", json={**GOOD, "search_space": SPACE}).json()["id"]
        r = client.get(f"/v1/studies/{sid}/importance")
        assert r.status_code == 409 and "needs at least 2" in r.json()["detail"]

        rng = random.Random(0)
        for i in range(40):
            lr, dropout = 10 ** rng.uniform(-4, -1), rng.uniform(0, 0.5)
            value = 1.0 - abs(lr - 0.01) * 8 + rng.gauss(0, 0.005)  # lr matters, dropout and the optimizer barely
            state = ("completed", "stopped_early", "failed")[i % 3]
            store.trials.upsert(sid, f"t{i}", config={"lr": lr, "dropout": dropout, "optimizer": rng.choice(["adam", "momentum"])},
                                state=state)
            store.trials.add_epoch(sid, f"t{i}", {"epoch": 1, "val_accuracy": value}, "val_accuracy", "max")

        r = client.get(f"/v1/studies/{sid}/importance")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["states"] == ["completed", "stopped_early"] and body["trials_used"] == 27  # failed trials left out
        assert "fANOVA" in body["evaluator"]
        scores = body["importances"]
        assert set(scores) == {"lr", "dropout", "optimizer"} and abs(sum(scores.values()) - 1.0) < 1e-6
        assert list(scores) == sorted(scores, key=lambda k: -scores[k])  # most important first
        assert next(iter(scores)) == "lr" and scores["lr"] > 0.8, scores
        assert client.get("/v1/studies/nope/importance").status_code == 404
