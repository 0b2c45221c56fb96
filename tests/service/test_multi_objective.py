"""Several objectives through the real app over HTTP (Ray faked): what a definition may ask for, the
Pareto front the API returns, and the warm start of a study with several objectives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest

from service.api.app import create_app
from service.definition import StudyDefinition
from service.pareto import dominates, minimized
from service.runner.warm_start import warm_start_plan
from service.store.synthetic import synthetic_study
from tests.service.fakes import GOOD, FakeJobs, serve_in_thread, settings_for

TWO = [{"metric": "val_accuracy", "mode": "max"}, {"metric": "param_count", "mode": "min"}]
MO = {**GOOD, "name": "mo", "objectives": TWO, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
      "fixed": {"epochs": 9}}


@pytest.mark.parametrize(("change", "field", "rule"), [
    ({"objectives": [TWO[0], {"metric": "f1", "mode": "max"}]}, "objectives.1.metric", "does not report 'f1'"),
    ({"objectives": [TWO[0], TWO[0]]}, "objectives", "each metric once"),
    ({"objectives": [TWO[0]]}, "objectives", "at least 2"),
    ({"objectives": [*TWO, *[{"metric": m, "mode": "min"} for m in ("val_loss", "latency_ms", "train_loss")]]}, "objectives", "at most 4"),
    ({"sampler": {"type": "cmaes"}}, "sampler.type", "optimises one objective"),
    ({"sampler": {"type": "gp"}}, "sampler.type", "nsga2"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type", "judges one objective"),
    ({"scheduler": {"type": "median"}}, "scheduler.type", "asha promotes by non-dominated sorting"),
    ({"scheduler": {"type": "asha", "grace_period": 1, "window": 9}}, "scheduler.window", "applies to one objective"),
    ({"sampler": {"type": "mf_tpe"}}, "sampler.type", "optimises one objective"),
    ({"objective": {"metric": "val_loss", "mode": "min"}}, "objective", "not both"),
])
def test_a_bad_multi_objective_definition_is_a_422_naming_the_field(tmp_path: Path, change: dict[str, Any], field: str, rule: str) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        r = client.post("/v1/studies", json={**MO, **change})
        assert r.status_code == 422, r.text
        fields = {e["field"]: e["message"] for e in r.json()["errors"]}
        assert field in fields and rule in fields[field], r.json()
        assert client.get("/v1/studies").json()["total"] == 0  # nothing stored


def test_a_multi_objective_study_is_stored_with_its_first_objective_as_the_objective(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        for sampler in ("tpe", "nsga2", "nsga3", "random"):
            r = client.post("/v1/studies", json={**MO, "sampler": {"type": sampler, "seed": 1}})
            assert r.status_code == 201, r.text
            d = r.json()["definition"]
            assert d["objectives"] == TWO and d["objective"] == TWO[0]
            assert StudyDefinition.model_validate(d).objective_list()[1].metric == "param_count"  # it round-trips
        same = client.post("/v1/studies", json={**MO, "objective": TWO[0]})
        assert same.status_code == 201  # objective equal to the first: allowed
        listed = {t["name"]: set(t["metrics"]) for t in client.get("/v1/trainables").json()}
        assert listed["mlp_bn_softmax"] >= {"param_count", "latency_ms"} and listed["cnn_bn_softmax"] >= {"param_count", "latency_ms"}


def test_pareto_returns_the_non_dominated_completed_trials(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    sid = synthetic_study(store, MO, 300, seed=4, running=5)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        out = client.get(f"/v1/studies/{sid}/pareto").json()
    objectives = [(o["metric"], o["mode"]) for o in out["objectives"]]
    assert objectives == [("val_accuracy", "max"), ("param_count", "min")]
    done = [t for t in store.trials.for_study(sid) if t.state == "completed"]
    assert out["trials_considered"] == len(done) and 10 < len(done) < 300  # ASHA-like stops left some out
    pts = {t.trial_id: minimized(t.last_metrics, objectives) for t in done}
    want = {i for i, p in pts.items() if not any(dominates(q, p) for q in pts.values())}
    got = [p["trial_id"] for p in out["front"]]
    assert set(got) == want and len(want) >= 3
    accs = [p["values"]["val_accuracy"] for p in out["front"]]
    assert accs == sorted(accs, reverse=True)  # by the first objective, best first
    params = [p["values"]["param_count"] for p in out["front"]]
    assert params == sorted(params, reverse=True)  # on a front of two, the second gets better as the first gets worse
    assert all(p["config"] for p in out["front"]) and {p["trial_id"] for p in out["points"]} == set(pts)
    stopped = {t.trial_id for t in store.trials.for_study(sid) if t.state == "stopped_early"}
    assert not stopped & {p["trial_id"] for p in out["points"]}  # a lower-fidelity value is not compared


def test_pareto_of_one_objective_is_the_best_and_points_are_bounded(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    single = synthetic_study(store, {**GOOD, "name": "one", "fixed": {"epochs": 3}}, 50, seed=1)
    big = synthetic_study(store, {**MO, "scheduler": {"type": "none"}}, 2600, seed=2)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        one = client.get(f"/v1/studies/{single}/pareto").json()
        best = client.get(f"/v1/studies/{single}/best", params={"k": 1}).json()["items"][0]
        assert [p["trial_id"] for p in one["front"]] == [best["trial_id"]]
        many = client.get(f"/v1/studies/{big}/pareto").json()
        assert many["trials_considered"] == 2600 and len(many["points"]) == 2000
        assert {p["trial_id"] for p in many["front"]} <= {p["trial_id"] for p in many["points"]}
        assert client.get("/v1/studies/0123456789abcdef/pareto").status_code == 404


def test_warm_start_of_a_multi_objective_study_gives_the_sampler_every_objective(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    parent = synthetic_study(store, MO, 40, seed=3)
    d = StudyDefinition.model_validate({**MO, "search_space": store.studies.get(parent).definition["search_space"],
                                        "warm_start": {"study": parent, "top_k": 3}})
    points, history = warm_start_plan(store, d, d.space())
    assert len(points) == 3
    completed = [t for t in history if t.state == optuna.trial.TrialState.COMPLETE]
    assert completed and all(len(t.values) == 2 for t in completed)
    assert any(t.state == optuna.trial.TrialState.PRUNED and not t.intermediate_values for t in history)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trials(history)  # Optuna takes them as they are
    assert study.best_trials
    d1 = StudyDefinition.model_validate({**d.model_dump(), "objectives": None, "objective": TWO[0]})
    assert warm_start_plan(store, d1, d1.space())[1] == []  # other objectives: the values are of another problem


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_definition_is_accepted(tmp_path: Path, path: Path) -> None:
    import yaml

    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        r = client.post("/v1/studies", content=path.read_bytes(), headers={"Content-Type": "application/yaml"})
        assert r.status_code == 201, r.text
        assert r.json()["definition"]["name"] == yaml.safe_load(path.read_text())["name"]


def test_refine_and_warm_start_of_a_multi_objective_study_start_from_its_front(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    parent = synthetic_study(store, MO, 300, seed=4)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        on_front = {p["trial_id"]: p["config"] for p in client.get(f"/v1/studies/{parent}/pareto").json()["front"]}
        assert len(on_front) >= 4
        r = client.post(f"/v1/studies/{parent}/refine", params={"dry_run": "true"}, json={"top_k": 4, "num_trials": 8}).json()
        child = StudyDefinition.model_validate(r["definition"])
        assert child.objectives == StudyDefinition.model_validate(MO).objectives
    top = store.trials.top(parent, [("val_accuracy", "max"), ("param_count", "min")], 4)
    assert {t.trial_id for t in top} <= set(on_front)  # the front first, not the 4 most accurate
    assert [t.trial_id for t in top] != [t.trial_id for t in store.trials.best(parent, "max", 4)]
    space = child.space()
    for t in top:  # the narrowed space holds each of them
        space.check_config(space.fit(t.config))
        assert space.fit(t.config).keys() == t.config.keys() - {"epochs"}
    points, _ = warm_start_plan(store, child, space)
    assert points == [space.fit(t.config) for t in top]


def test_refine_may_change_the_objectives_and_warm_start_needs_a_completed_trial(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    parent = synthetic_study(store, MO, 60, seed=6)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        one = client.post(f"/v1/studies/{parent}/refine", json={"top_k": 3, "num_trials": 4, "objective": {"metric": "val_loss", "mode": "min"}})
        assert one.status_code == 201, one.text
        assert one.json()["definition"]["objective"] == {"metric": "val_loss", "mode": "min"} and not one.json()["definition"]["objectives"]
        three = [*TWO, {"metric": "latency_ms", "mode": "min"}]
        other = client.post(f"/v1/studies/{parent}/refine", json={"top_k": 3, "num_trials": 4, "objectives": three})
        assert other.status_code == 201, other.text
        assert other.json()["definition"]["objectives"] == three
        # a parent with two objectives whose trials all stopped early has nothing to start from
        stopped = store.studies.create("stopped", StudyDefinition.model_validate(MO).model_dump(mode="json"), owner="local").id
        store.trials.upsert(stopped, "s0", config={"lr": 0.01}, state="stopped_early")
        store.trials.add_epoch(stopped, "s0", {"epoch": 1, "val_accuracy": 0.5, "param_count": 100}, "val_accuracy", "max")
        r = client.post("/v1/studies", json={**MO, "warm_start": {"study": stopped, "top_k": 2}})
        assert r.status_code == 422 and r.json()["field"] == "warm_start.study" and "completed trial with every objective" in r.json()["detail"]
