"""The REST API in-process (the real app and store, uvicorn in a thread, a fake of Ray's side):
validation, the stored definition, catalog, errors. Milliseconds per test."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.client import CaviarError, Client
from service.definition import StudyDefinition
from tests.service.fakes import GOOD, FakeJobs, inprocess_api


def _with(path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(GOOD)
    keys = path.split(".")
    node = d
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, FakeJobs, Path]]:
    data = tmp_path_factory.mktemp("api")
    (data / "datasets").mkdir()
    (data / "datasets" / "table.csv").write_text("a,b,target\n1,2,0\n3,4,1\n")
    with inprocess_api(data) as (client, jobs):
        yield client, jobs, data


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        (_with("trainable", "resnet50"), "trainable", "unknown trainable 'resnet50'"),
        (_with("dataset", {"name": "imagenet"}), "dataset", "does not match any of the expected tags"),
        (_with("search_space", {"lr": {"type": "float", "low": 1, "high": 0.1}}), "search_space.lr", "low must be < high"),
        (_with("search_space", "eight_key"), "search_space", "unknown search-space preset 'eight_key'"),
        (_with("search_space", {"lrr": {"type": "float", "low": 0.1, "high": 1}}), "search_space.lrr", "has no knob 'lrr'"),
        ({**_with("search_space", {"width": {"type": "int", "low": 1, "high": 200}, "batch_size": {"type": "int", "low": 2, "high": 201}}), "sampler": {"type": "grid"}},
         "search_space", "more than the limit of 10000"),
        (_with("budget.num_trials", -1), "budget.num_trials", "greater than or equal to 1"),
        (_with("resources_per_trial.gpu", 1), "resources_per_trial.gpu", "the Ray cluster has 0"),
        (_with("sampler", {"type": "annealing"}), "sampler.type", "unknown sampler 'annealing' (expected one of tpe, mf_tpe, random, grid, cmaes, qmc, gp, nsga2, nsga3)"),
        (_with("scheduler", {"type": "pbt"}), "scheduler.type", "unknown scheduler 'pbt' (expected one of asha, hyperband, median, none)"),
        (_with("objective", {"metric": "f1"}), "objective.metric", "'mlp_bn_softmax' does not report 'f1' (it reports: train_loss, val_loss"),
        (_with("fixed", {"epochs": 0}), "fixed.epochs", "greater than or equal to 1"),
        (_with("dataset", {"name": "file", "path": "../../etc/passwd.csv"}), "dataset.path", "outside the data directory"),
        (_with("dataset", {"name": "file", "path": "absent.npz"}), "dataset.path", "no file 'absent.npz'"),
        (_with("dataset", {"name": "file", "path": "table.csv"}), "dataset.target", "column 'label' is not in table.csv (its columns: a, b, target)"),
        (_with("scheduler", {"type": "asha", "grace_period": 5}), "scheduler.grace_period", "must be <= the epochs a trial runs (2)"),
        (_with("scheduler", {"type": "median", "window": 9}), "scheduler.window", "window applies to scheduler type asha only, not 'median'"),
        (_with("sampler", {"type": "cmaes", "constant_liar": False}), "sampler.constant_liar",
         "constant_liar applies to sampler types tpe, mf_tpe only, not 'cmaes'"),
        (_with("sampler", {"type": "tpe", "multivariate": False, "group": True}), "sampler.group", "group needs multivariate: true"),
    ],
    ids=["trainable", "dataset", "space", "preset", "knob", "grid", "budget", "gpu", "sampler", "scheduler", "metric", "fixed",
         "traversal", "missing-file", "label-column", "grace", "window", "tpe-option", "tpe-group"],
)
def test_bad_definitions_get_422_naming_the_field_and_store_nothing(server: tuple[Client, FakeJobs, Path], body: dict[str, Any], field: str, rule: str) -> None:
    client, _, _ = server
    before = client.studies()["total"]
    with pytest.raises(CaviarError) as caught:
        client.submit(body)
    err = caught.value
    assert err.status == 422 and {"type", "title", "status", "detail"} <= set(err.body)
    assert err.field is not None and err.field.startswith(field), err.body
    assert rule in err.detail, err.body
    assert client.studies()["total"] == before


def test_a_file_dataset_with_its_label_column_named_is_accepted(server: tuple[Client, FakeJobs, Path]) -> None:
    client, _, _ = server
    study = client.submit(_with("dataset", {"name": "file", "path": "table.csv", "target": "target"}))
    assert study["status"] == "queued" and study["definition"]["dataset"]["target"] == "target"


def test_yaml_bodies_and_bad_syntax(server: tuple[Client, FakeJobs, Path]) -> None:
    client, _, _ = server
    with pytest.raises(CaviarError) as bad:
        client.submit("name: [unclosed")
    assert bad.value.status == 422 and "not valid YAML" in bad.value.detail
    with pytest.raises(CaviarError) as unknown:
        client.submit(yaml.safe_dump(_with("trainable", "nope")))
    assert unknown.value.status == 422 and unknown.value.field == "trainable"
    assert client.submit(yaml.safe_dump(GOOD))["status"] == "queued"


def test_the_stored_definition_has_its_presets_resolved(server: tuple[Client, FakeJobs, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A preset edited after submission does not change a study's space (nor a resume's)."""
    from search_spaces import _presets, load_preset

    client, _, _ = server
    study = client.submit({**GOOD, "search_space": ["seven_key", {"lr": {"type": "float", "low": 0.001, "high": 0.5, "log": True}}]})
    stored = study["definition"]["search_space"]
    assert stored["lr"] == {"type": "float", "low": 0.001, "high": 0.5, "log": True}
    assert set(stored) == set(load_preset("seven_key").to_dict())
    # the preset changes on disk: the study's definition, as the driver reads it, does not
    edited = tmp_path / "presets"
    edited.mkdir()
    (edited / "seven_key.yaml").write_text("description: edited\nparameters:\n  lr: {type: float, low: 0.5, high: 0.9}\n")
    monkeypatch.setattr(_presets, "PRESET_DIR", edited)
    _presets._raw.cache_clear()
    try:
        assert set(load_preset("seven_key").to_dict()) == {"lr"}
        space = StudyDefinition.model_validate(study["definition"]).space()
        assert space.to_dict() == stored
    finally:
        _presets._raw.cache_clear()


def test_unknown_ids_are_404_and_catalog_lists_names(server: tuple[Client, FakeJobs, Path]) -> None:
    client, _, _ = server
    for method, path in (("GET", "/v1/studies/nope"), ("GET", "/v1/studies/nope/trials"), ("GET", "/v1/studies/nope/best"),
                         ("GET", "/v1/studies/nope/trials/t"), ("POST", "/v1/studies/nope/cancel")):
        r = client.http.request(method, path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    trainables = {t["name"]: t for t in client.trainables()}
    assert {"mlp_bn_softmax", "cnn_bn_softmax", "busy_work"} <= set(trainables)
    assert "val_accuracy" in trainables["mlp_bn_softmax"]["metrics"] and "lr" in trainables["mlp_bn_softmax"]["knobs"]
    spaces = {s["name"]: s for s in client.search_spaces()}
    assert spaces["seven_key"]["parameters"]["lr"]["log"] is True
    assert client.http.get("/readyz").json() == {"status": "ready", "store": True, "ray": True}
    openapi = client.http.get("/openapi.json").json()
    assert "/v1/studies" in openapi["paths"]
    assert "tpe" in openapi["components"]["schemas"]["Sampler"]["properties"]["type"]["description"]


def test_a_cancel_stops_the_study_job_and_a_second_is_409(server: tuple[Client, FakeJobs, Path]) -> None:
    from service.local import wait_until

    client, jobs, _ = server
    sid = client.submit(GOOD)["id"]
    wait_until(lambda: sid in jobs.submitted, 10, "the study to be handed to Ray")
    assert client.cancel(sid)["status"] == "cancelled"
    assert f"job-{sid}" in jobs.stopped
    with pytest.raises(CaviarError) as again:
        client.cancel(sid)
    assert again.value.status == 409


SERVE_AND_LIST_MODULES = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from service.api.app import create_app
    from service.settings import load_settings
    from tests.service.fakes import serve_in_thread
    from service.client import Client

    data = Path(sys.argv[1])
    (data / "datasets").mkdir(exist_ok=True)
    # the real app with the real Ray side (RayJobs), pointed where no Ray listens
    app = create_app(load_settings(data_dir=data, ray_address="http://127.0.0.1:9"))
    definitions = json.loads(sys.argv[2])
    with serve_in_thread(app) as url, Client(url) as client:
        for definition in definitions:  # a built-in PyTorch trainable and a plug-in's
            study = client.submit(definition)
            client.study(study["id"]); client.trials(study["id"]); client.best(study["id"])
        client.trainables(); client.search_spaces()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith(("ray.tune", "ray.train")))
    print(json.dumps({"status": study["status"], "loaded": loaded}))
""")


def test_the_api_process_serving_a_submission_loads_neither_torch_nor_ray_tune(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    definitions = [{**GOOD, "search_space": ["seven_key", "batchnorm"], "fixed": {"epochs": 3}},
                   {**GOOD, "trainable": "softmax_f1", "objective": {"metric": "val_f1"}, "search_space": {"lr": {"type": "float", "low": 0.01, "high": 1}}}]
    out = subprocess.run([sys.executable, "-c", SERVE_AND_LIST_MODULES, str(tmp_path), json.dumps(definitions)],
                         capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": "queued", "loaded": []}


def test_an_autoscaling_cluster_declares_the_node_it_can_add(tmp_path: Path) -> None:
    """A 0-CPU head whose worker groups scale from zero: the live cluster has no CPU and no GPU, and
    CAVIAR_NODE_RESOURCES says what the autoscaler can add; beyond that is still a 422."""
    gpu = _with("resources_per_trial.gpu", 1)
    with inprocess_api(tmp_path, FakeJobs({"CPU": 0.0}), node_resources={"CPU": 8, "GPU": 1}) as (client, _):
        assert client.submit(gpu)["status"] == "queued"
        with pytest.raises(CaviarError) as caught:
            client.submit(_with("resources_per_trial.gpu", 2))
        assert caught.value.status == 422 and caught.value.field == "resources_per_trial.gpu" and "has 1" in caught.value.detail
    with inprocess_api(tmp_path / "live", FakeJobs({"CPU": 0.0})) as (client, _), pytest.raises(CaviarError) as caught:
        client.submit(gpu)  # nothing declared: only what is alive counts
    assert caught.value.status == 422


def test_a_summary_listing_is_the_full_one_without_definitions_and_a_bad_view_is_422(server: tuple[Client, FakeJobs, Path]) -> None:
    client, _, _ = server
    ids = [client.submit(GOOD | {"name": f"listed-{i}", "search_space": "seven_key"})["id"] for i in range(3)]
    full = client.studies(limit=200)
    summary = client.studies(limit=200, view="summary")
    assert summary["total"] == full["total"] >= 3
    assert [s["id"] for s in summary["items"]] == [s["id"] for s in full["items"]]
    for long, short in zip(full["items"], summary["items"], strict=True):
        assert "definition" in long and long["definition"]["name"] == long["name"]
        assert set(short) == set(long) - {"definition"}
        stable = ("id", "name", "owner", "trainable", "objective", "created_at", "parent_id", "num_trials")  # the dispatcher may move the rest
        assert short["num_trials"] == long["definition"]["budget"]["num_trials"]
        assert {k: short[k] for k in stable} == {k: long[k] for k in stable}
    assert set(ids) <= {s["id"] for s in summary["items"]}
    sizes = {view: len(client.http.get("/v1/studies", params={"limit": 200, "view": view}).content) for view in ("full", "summary")}
    assert sizes["summary"] * 3 < sizes["full"], sizes  # a resolved search space is most of a study's bytes
    r = client.http.get("/v1/studies", params={"view": "brief"})
    assert r.status_code == 422 and r.json()["field"] == "query.view" and "summary" in r.json()["detail"], r.json()


def test_each_listed_study_is_its_own_view_and_a_stored_nan_is_listed_as_null(tmp_path: Path) -> None:
    """A full listing passes each definition through as the store holds it: every item is what
    GET /v1/studies/{id} answers for it (counts and best included), and a NaN that Python's json wrote
    into a stored definition (JSON has none) is listed as null, as the study's own view shows it."""
    import httpx

    from service.api.app import create_app
    from service.store.synthetic import synthetic_study
    from tests.service.fakes import serve_in_thread, settings_for

    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    minimized = {"objective": {"metric": "val_loss", "mode": "min"}}  # best per direction
    ids = [synthetic_study(store, GOOD | {"name": f"synthetic-{i}"} | (minimized if i % 2 else {}), 4 + i, seed=i) for i in range(3)]
    row = store.studies.get(ids[1])
    assert row is not None
    store.studies.update(ids[1], definition={**row.definition, "note": float("nan"), "limits": [float("inf"), -float("inf"), 1.5]})

    def strict(content: bytes) -> Any:
        return json.loads(content, parse_constant=lambda c: pytest.fail(f"{c} in a response: not JSON"))

    with serve_in_thread(app) as url:
        for view in ("full", "summary"):
            page = strict(httpx.get(f"{url}/v1/studies", params={"limit": 50, "view": view}).content)
            assert [item["id"] for item in page["items"]] == ids[::-1] and page["total"] == 3
            for item in page["items"]:
                own = strict(httpx.get(f"{url}/v1/studies/{item['id']}").content)
                assert item == (own if view == "full" else {k: v for k, v in own.items() if k != "definition"})
                assert sum(item["trial_counts"].values()) > 0 and item["best"] is not None
        listed = strict(httpx.get(f"{url}/v1/studies", params={"limit": 1, "offset": 1}).content)["items"][0]
        assert listed["id"] == ids[1] and listed["definition"]["note"] is None and listed["definition"]["limits"] == [None, None, 1.5]
