"""Coarse-to-fine refine, warm start and extend through the real app over HTTP (Ray faked): the
definitions they make, their validation, lineage, and the runner's warm-start plan on a real store."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from search_spaces import SearchSpace
from service.api.app import create_app
from service.definition import StudyDefinition
from service.local import wait_until
from service.runner.warm_start import warm_start_plan
from service.store import Store
from tests.service.fakes import GOOD, FakeJobs, serve_in_thread, settings_for

SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
         "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
         "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["momentum"]}},
         "width": {"type": "int", "low": 16, "high": 256}}
PARENT = {**GOOD, "name": "coarse", "search_space": SPACE, "budget": {"num_trials": 12, "max_concurrent_trials": 2}}


def finished_parent(store: Store, client: httpx.Client, definition: dict[str, Any] = PARENT) -> tuple[str, list[dict[str, Any]]]:
    """A parent study with 12 measured trials: lr near 0.01 and adam are best."""
    sid = client.post("/v1/studies", json=definition).json()["id"]
    configs = []
    for i in range(12):
        opt = ("adam", "sgd", "momentum")[i % 3]
        config: dict[str, Any] = {"lr": 10 ** (-4 + 4 * i / 11), "optimizer": opt, "width": 16 + 20 * i}
        if opt == "momentum":
            config["momentum"] = 0.9
        value = 1.0 - abs(math.log10(config["lr"]) + 2) / 4 - (0.0 if opt == "adam" else 0.2)
        store.trials.upsert(sid, f"p{i}", config=config, state="completed" if i % 2 else "stopped_early")
        store.trials.add_epoch(sid, f"p{i}", {"epoch": 2, "val_accuracy": value}, "val_accuracy", "max")
        configs.append({**config, "value": value, "trial_id": f"p{i}"})
    store.studies.finish(sid, __import__("service.definition", fromlist=["StudyStatus"]).StudyStatus.COMPLETED)
    return sid, sorted(configs, key=lambda c: -c["value"])


def test_search_space_fit_keeps_what_the_space_can_run() -> None:
    space = SearchSpace.model_validate(SPACE)
    assert space.fit({"lr": 0.01, "optimizer": "momentum", "momentum": 0.9, "width": 32, "gone": 1}) == \
        {"lr": 0.01, "optimizer": "momentum", "momentum": 0.9, "width": 32}
    assert space.fit({"lr": 5.0, "optimizer": "adam", "momentum": 0.9}) == {"optimizer": "adam"}  # out of range; inactive
    assert space.fit({"optimizer": "rmsprop", "momentum": 0.9}) == {}  # a choice gone: its child cannot be active


def test_refine_narrows_around_the_top_k_and_links_parent_and_child(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        empty = client.post("/v1/studies", json=PARENT).json()["id"]
        r = client.post(f"/v1/studies/{empty}/refine", json={"top_k": 3, "num_trials": 8})
        assert r.status_code == 409 and "nothing to refine around" in r.json()["detail"]

        sid, ranked = finished_parent(store, client)
        top3 = ranked[:3]
        dry = client.post(f"/v1/studies/{sid}/refine", params={"dry_run": "true"}, json={"top_k": 3, "num_trials": 8})
        assert dry.status_code == 200, dry.text
        plan = dry.json()
        space = plan["definition"]["search_space"]
        assert space["optimizer"]["choices"] == sorted({c["optimizer"] for c in top3}, key=["sgd", "momentum", "adam"].index)
        lo, hi = space["lr"]["low"], space["lr"]["high"]
        assert 1e-4 <= lo <= min(c["lr"] for c in top3) and max(c["lr"] for c in top3) <= hi <= 1.0 and space["lr"]["log"]
        assert hi / lo < 1e4  # narrower than the parent's four decades
        assert set(plan["narrowed"]) >= {"lr", "width"}
        assert plan["definition"]["warm_start"] == {"study": sid, "top_k": 3} and plan["definition"]["budget"]["num_trials"] == 8
        assert [s["id"] for s in client.get("/v1/studies").json()["items"]].count(sid) == 1 and client.get("/v1/studies").json()["total"] == 2  # nothing stored

        bad = client.post(f"/v1/studies/{sid}/refine", json={"top_k": 3, "num_trials": 8, "sampler": {"type": "nope"}})
        assert bad.status_code == 422 and bad.json()["field"].startswith("sampler")
        assert client.post(f"/v1/studies/{sid}/refine", json={"top_k": 0}).status_code == 422

        made = client.post(f"/v1/studies/{sid}/refine", json={"top_k": 3, "num_trials": 8, "name": "fine", "budget": {"max_concurrent_trials": 1}})
        assert made.status_code == 201, made.text
        child = made.json()
        assert child["name"] == "fine" and child["parent_id"] == sid and child["definition"]["budget"] == {**PARENT["budget"], "num_trials": 8, "max_concurrent_trials": 1, "time_budget_s": None, "max_failures": 2}
        assert child["definition"]["search_space"] == space
        children = client.get("/v1/studies", params={"parent_id": sid}).json()
        assert [s["id"] for s in children["items"]] == [child["id"]]
        assert client.get(f"/v1/studies/{sid}").json()["parent_id"] is None


def test_a_refine_that_changes_the_sampler_or_scheduler_type_drops_the_old_types_options(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    tuned = {**PARENT, "sampler": {"type": "tpe", "seed": 3, "group": False},
             "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3, "window": 9}}
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        sid, _ = finished_parent(store, client, tuned)
        assert client.get(f"/v1/studies/{sid}").json()["definition"]["sampler"]["group"] is False  # stored as given
        same = client.post(f"/v1/studies/{sid}/refine", params={"dry_run": "true"},
                           json={"top_k": 3, "num_trials": 8, "sampler": {"seed": 4}, "scheduler": {"window": 12}}).json()["definition"]
        assert same["sampler"]["group"] is False and same["sampler"]["seed"] == 4 and same["scheduler"]["window"] == 12  # merged
        r = client.post(f"/v1/studies/{sid}/refine", json={"top_k": 3, "num_trials": 8, "sampler": {"type": "random"},
                                                            "scheduler": {"type": "median"}})
        assert r.status_code == 201, r.text  # group (TPE's) and window (ASHA's) went with their types
        assert r.json()["definition"]["sampler"]["type"] == "random" and r.json()["definition"]["sampler"]["group"] is None
        assert r.json()["definition"]["scheduler"]["type"] == "median" and r.json()["definition"]["scheduler"]["window"] is None


def test_warm_start_names_a_measured_study_of_the_same_owner(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        r = client.post("/v1/studies", json={**PARENT, "warm_start": {"study": "0123456789abcdef", "top_k": 2}})
        assert r.status_code == 422 and r.json()["field"] == "warm_start.study" and "no study" in r.json()["detail"]
        r = client.post("/v1/studies", json={**PARENT, "warm_start": {"study": "not-an-id"}})
        assert r.status_code == 422 and r.json()["field"] == "warm_start.study"
        queued = client.post("/v1/studies", json=PARENT).json()["id"]
        r = client.post("/v1/studies", json={**PARENT, "warm_start": {"study": queued}})
        assert r.status_code == 422 and "no completed or stopped-early trial" in r.json()["detail"]
        sid, _ = finished_parent(store, client)
        ok = client.post("/v1/studies", json={**PARENT, "warm_start": {"study": sid, "top_k": 2}})
        assert ok.status_code == 201 and ok.json()["parent_id"] == sid
    # another owner cannot start from it
    other = store.studies.create("theirs", store.studies.get(sid).definition, owner="bob")  # type: ignore[union-attr]
    settings = settings_for(tmp_path, auth="required")
    app2 = create_app(settings, jobs=FakeJobs())
    token = app2.state.ctx.store.tokens.create("alice")[1]
    with serve_in_thread(app2) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        r = client.post("/v1/studies", json={**PARENT, "warm_start": {"study": other.id}})
        assert r.status_code == 422 and "of owner 'alice'" in r.json()["detail"]


def test_warm_start_plan_runs_the_top_k_first_and_seeds_history_only_in_the_same_space(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        sid, ranked = finished_parent(store, client)
    same = StudyDefinition.model_validate({**PARENT, "warm_start": {"study": sid, "top_k": 3}})
    points, history = warm_start_plan(store, same, same.space())
    assert points == [{k: v for k, v in c.items() if k not in ("value", "trial_id")} for c in ranked[:3]]
    assert len(history) == 12
    assert {t.state.name for t in history} == {"COMPLETE", "PRUNED"}
    pruned = next(t for t in history if t.state.name == "PRUNED")
    assert pruned.intermediate_values == {2: pytest.approx(next(c["value"] for c in ranked if c["trial_id"] == "p0"))}

    narrower = StudyDefinition.model_validate({**PARENT, "search_space": {**SPACE, "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}},
                                               "warm_start": {"study": sid, "top_k": 3}})
    points, history = warm_start_plan(store, narrower, narrower.space())
    assert history == []  # another space: the values were measured on another problem
    assert all("lr" not in p or 1e-3 <= p["lr"] <= 0.1 for p in points) and len(points) == 3


def test_extend_a_finished_study(tmp_path: Path) -> None:
    jobs = FakeJobs()
    app = create_app(settings_for(tmp_path), jobs=jobs)
    store = app.state.ctx.store
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        sid = client.post("/v1/studies", json=PARENT).json()["id"]
        wait_until(lambda: sid in jobs.submitted, 10, "the study to be handed to Ray")
        r = client.post(f"/v1/studies/{sid}/extend", json={"num_trials": 4})
        assert r.status_code == 409 and "only a finished" in r.json()["detail"]
        store.trials.upsert(sid, "t0", config={"lr": 0.01}, state="completed")
        from service.definition import StudyStatus

        store.studies.finish(sid, StudyStatus.COMPLETED)
        assert client.post(f"/v1/studies/{sid}/extend", json={"num_trials": 0}).status_code == 422
        r = client.post(f"/v1/studies/{sid}/extend", json={"num_trials": 4})
        assert r.status_code == 200, r.text
        s = r.json()
        assert s["id"] == sid and s["status"] == "queued" and s["definition"]["budget"]["num_trials"] == 16 and s["extended_at"]
        assert s["finished_at"] is None and s["trial_counts"]["completed"] == 1  # what was measured stays
        wait_until(lambda: jobs.submitted.count(sid) == 2, 10, "the extension to be handed to Ray as a new job")
        assert client.get(f"/v1/studies/{sid}").json()["ray_job_id"] == f"job-{sid}"


def test_a_resumed_extension_keeps_the_earlier_runs_trials(tmp_path: Path) -> None:
    from datetime import timedelta

    from service.store import now

    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    sid = store.studies.create("s", StudyDefinition.model_validate(PARENT).model_dump(mode="json")).id
    store.trials.upsert(sid, "old", config={}, state="completed", started_at=now() - timedelta(hours=1))
    since = now()
    store.trials.upsert(sid, "new-known", config={}, state="running", started_at=since + timedelta(seconds=1))
    store.trials.upsert(sid, "new-lost", config={}, state="running", started_at=since + timedelta(seconds=2))
    assert store.trials.forget_except(sid, {"new-known"}, started_since=since) == ["new-lost"]
    assert {t.trial_id for t in store.trials.for_study(sid)} == {"old", "new-known"}
