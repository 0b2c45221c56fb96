"""The REST API over HTTP (caviar serve: uvicorn, a real Ray head, SQLite): validation, catalog, errors."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Api

pytestmark = pytest.mark.ray

GOOD: dict[str, Any] = {
    "name": "tiny",
    "trainable": "mlp_bn_softmax",
    "dataset": {"name": "digits"},
    "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}},
    "fixed": {"epochs": 2},
    "budget": {"num_trials": 2, "max_concurrent_trials": 2},
    "scheduler": {"type": "none"},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(GOOD)
    keys = path.split(".")
    node = d
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return d


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
        (_with("sampler", {"type": "annealing"}), "sampler.type", "Input should be"),
        (_with("fixed", {"epochs": 0}), "fixed.epochs", "greater than or equal to 1"),
        (_with("dataset", {"name": "file", "path": "../../etc/passwd.csv"}), "dataset.path", "outside the data directory"),
        (_with("dataset", {"name": "file", "path": "absent.npz"}), "dataset.path", "no file 'absent.npz'"),
        (_with("scheduler", {"type": "asha", "grace_period": 5}), "scheduler.grace_period", "must be <= the epochs a trial runs (2)"),
    ],
    ids=["trainable", "dataset", "space", "preset", "knob", "grid", "budget", "gpu", "sampler", "fixed", "traversal", "missing-file", "grace"],
)
def test_bad_definitions_get_422_naming_the_field_and_store_nothing(api: Api, body: dict, field: str, rule: str) -> None:
    before = httpx.get(f"{api.url}/v1/studies").json()["total"]
    r = httpx.post(f"{api.url}/v1/studies", json=body, timeout=30)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert {"type", "title", "status", "detail"} <= set(problem)
    assert problem["field"].startswith(field), problem
    assert rule in problem["detail"], problem
    assert httpx.get(f"{api.url}/v1/studies").json()["total"] == before


def test_yaml_bodies_and_bad_syntax(api: Api) -> None:
    r = httpx.post(f"{api.url}/v1/studies", content="name: [unclosed", headers={"Content-Type": "application/yaml"})
    assert r.status_code == 422 and "not valid YAML" in r.json()["detail"]
    r = httpx.post(f"{api.url}/v1/studies", content=yaml.safe_dump(_with("trainable", "nope")), headers={"Content-Type": "application/yaml"})
    assert r.status_code == 422 and r.json()["field"] == "trainable"


def test_unknown_ids_are_404_and_catalog_lists_names(api: Api) -> None:
    for path in ("/v1/studies/nope", "/v1/studies/nope/trials", "/v1/studies/nope/best", "/v1/studies/nope/trials/t"):
        r = httpx.get(api.url + path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    assert httpx.post(f"{api.url}/v1/studies/nope/cancel").status_code == 404
    names = {t["name"] for t in httpx.get(f"{api.url}/v1/trainables").json()}
    assert {"mlp_bn_softmax", "cnn_bn_softmax"} <= names
    spaces = {s["name"]: s for s in httpx.get(f"{api.url}/v1/search-spaces").json()}
    assert spaces["seven_key"]["parameters"]["lr"]["log"] is True
    assert httpx.get(f"{api.url}/readyz").json() == {"status": "ready", "store": True, "ray": True}
    assert "/v1/studies" in httpx.get(f"{api.url}/openapi.json").json()["paths"]
