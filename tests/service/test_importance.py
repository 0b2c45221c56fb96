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


def test_the_bounded_forest_ranks_as_optunas_default_does() -> None:
    """Depth 8 (search_spaces.FANOVA_DEPTH) keeps importance to seconds at any study size; on an
    objective with a clear order of parameters it ranks them as Optuna's default forest does."""
    import optuna

    from search_spaces import SearchSpace, importance

    space = SearchSpace.model_validate({**SPACE, "width": {"type": "int", "low": 16, "high": 256}})
    rng = random.Random(1)
    trials = []
    for _ in range(150):
        c = {"lr": 10 ** rng.uniform(-4, -1), "dropout": rng.uniform(0, 0.5), "optimizer": rng.choice(["adam", "momentum"]),
             "width": rng.randint(16, 256)}
        trials.append((c, -abs(c["lr"] - 0.01) * 8 - c["dropout"] * 0.3 - (c["optimizer"] == "adam") * 0.08 + rng.gauss(0, 0.002)))
    bounded = importance(space, trials, "max")
    study = optuna.create_study(direction="maximize")
    dists = space.distributions()
    for c, v in trials:
        study.add_trial(optuna.trial.create_trial(params=c, distributions=dists, value=v))
    default = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert list(bounded)[:3] == list(default)[:3] == ["lr", "dropout", "optimizer"], (bounded, default)


def test_importance_over_many_trials_uses_an_even_sample(tmp_path: Path) -> None:
    from service.api import studies
    from service.store.synthetic import synthetic_study

    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    ctx = app.state.ctx
    definition = {**GOOD, "search_space": SPACE, "fixed": {"epochs": 9}, "scheduler": {"type": "asha", "grace_period": 1}}
    sid = synthetic_study(ctx.store, definition, studies.MAX_IMPORTANCE_TRIALS + 200)
    out = studies.importance(ctx, sid)
    assert out.trials_measured == studies.MAX_IMPORTANCE_TRIALS + 200 and out.trials_used == studies.MAX_IMPORTANCE_TRIALS
    assert studies.importance(ctx, sid) == out and len(ctx.importances) == 1  # computed once for the same trials
