"""The study page's data: GET .../plots (sampled on the server, bounded at any size) and the paged,
sorted GET .../trials?limit=, over HTTP against the real app (Ray faked) on a synthetic study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api import plots
from service.api.app import create_app
from service.definition import StudyDefinition
from service.store.synthetic import synthetic_study
from tests.service.fakes import GOOD, FakeJobs, serve_in_thread, settings_for

DEFINITION = {**GOOD, "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                                       "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}},
              "fixed": {"epochs": 27}, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
              "budget": {"num_trials": 3000, "max_concurrent_trials": 4}}


def test_even_spreads_over_the_whole_sequence() -> None:
    assert plots.even(list(range(10)), 20) == list(range(10))
    picked = plots.even(list(range(1000)), 5)
    assert picked[0] == 0 and picked[-1] == 999 and len(picked) == 5 and picked == sorted(set(picked))
    assert plots.even([1, 2, 3], 0) == []


@pytest.mark.parametrize(("grace", "rf", "max_t"), [(1, 3, 27), (2, 3, 60), (1, 4, 30), (3, 2, 50), (5, 3, 5)])
def test_rungs_are_where_rays_asha_decides(grace: int, rf: float, max_t: int) -> None:
    from ray.tune.schedulers import ASHAScheduler

    d = StudyDefinition.model_validate({**GOOD, "fixed": {"epochs": max_t}, "scheduler": {"type": "asha", "grace_period": grace, "reduction_factor": rf}})
    ray_rungs = sorted(milestone for milestone, _ in ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=grace, reduction_factor=rf)._brackets[0]._rungs
                       if milestone < max_t)  # Ray may place one at max_t itself, where trials end anyway
    assert d.rungs() == pytest.approx(ray_rungs)


def test_the_plots_of_a_3000_trial_study_are_bounded_and_keep_what_matters(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    sid = synthetic_study(store, DEFINITION, 3000, running=5, status="running")
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        r = client.get(f"/v1/studies/{sid}/plots")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert client.get("/v1/studies/nope/plots").status_code == 404
        trials = client.get(f"/v1/studies/{sid}/trials").json()
    finished = [t for t in trials if t["state"] != "running"]
    best = max(t["best_value"] for t in finished)

    h = body["history"]
    assert h["total"] == 3000 and len(h["points"]) == plots.MAX_POINTS
    steps = [p[2] for p in h["best"]]
    assert steps == sorted(steps) and steps[-1] == best  # the best-so-far line ends at the study's best

    c = body["curves"]
    assert c["rungs"] == [1, 3, 9] and c["scheduler"] == "asha" and c["max_epochs"] == 27
    assert len(c["items"]) == plots.MAX_CURVES and c["total"] == 3005
    shown = {x["trial_id"]: x for x in c["items"]}
    top = sorted(finished, key=lambda t: -t["best_value"])[: plots.TOP]
    assert {t["trial_id"] for t in top} <= set(shown)  # the best trials' curves are always there
    assert {t["trial_id"] for t in trials if t["state"] == "running"} <= set(shown)  # and the running ones
    by_id = {t["trial_id"]: t for t in trials}
    for x in c["items"]:
        assert len(x["values"]) == by_id[x["trial_id"]]["epochs"]  # a stopped trial's curve ends where it was cut
        if x["state"] == "stopped_early":
            assert len(x["values"]) in (1, 3, 9)

    p = body["parallel"]
    assert set(p["params"]) == {"lr", "optimizer"} and p["total"] == 3000 and len(p["rows"]) == plots.MAX_ROWS
    assert max(row["value"] for row in p["rows"]) == best
    assert len(r.content) < 400_000


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_page_of_trials_sorted_and_filtered_by_the_database(tmp_path: Path, database: str, request: pytest.FixtureRequest) -> None:
    settings = settings_for(tmp_path)
    if database == "postgres":
        settings = settings.model_copy(update={"database_url": request.getfixturevalue("postgres_url")})
    app = create_app(settings, jobs=FakeJobs())
    sid = synthetic_study(app.state.ctx.store, DEFINITION, 300, running=3, status="running")
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        page = client.get(f"/v1/studies/{sid}/trials", params={"sort": "best_value", "order": "desc", "limit": 5})
        assert page.status_code == 200 and page.headers["X-Total-Count"] == "303"
        best = client.get(f"/v1/studies/{sid}/best", params={"k": 5}).json()["items"]
        assert [t["trial_id"] for t in page.json()] == [b["trial_id"] for b in best]

        counts = client.get(f"/v1/studies/{sid}").json()["trial_counts"]
        for state in ("running", "stopped_early", "completed"):
            r = client.get(f"/v1/studies/{sid}/trials", params={"state": state, "limit": 500})
            assert int(r.headers["X-Total-Count"]) == counts[state] == len(r.json()) and {t["state"] for t in r.json()} == {state}

        second = client.get(f"/v1/studies/{sid}/trials", params={"sort": "epochs", "limit": 100, "offset": 100}).json()
        everything = client.get(f"/v1/studies/{sid}/trials", params={"sort": "epochs", "limit": 500}).json()
        assert second == everything[100:200] and [t["epochs"] for t in everything] == sorted(t["epochs"] for t in everything)

        ascending = client.get(f"/v1/studies/{sid}/trials", params={"sort": "finished_at", "limit": 500}).json()
        assert [t["state"] for t in ascending[-3:]] == ["running"] * 3  # no value sorts last

        bad = client.get(f"/v1/studies/{sid}/trials", params={"sort": "config", "limit": 5})
        assert bad.status_code == 422 and bad.json()["field"] == "query.sort"
        assert client.get(f"/v1/studies/{sid}/trials", params={"limit": 501}).status_code == 422
        assert len(client.get(f"/v1/studies/{sid}/trials").json()) == 303  # without paging: every trial, as before
