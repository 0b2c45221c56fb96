"""Hostile and careless requests against `caviar serve` itself (uvicorn over HTTP, SQLite, no Ray:
studies stay queued): each answers fast with a problem naming the field, and the server keeps
answering /healthz meanwhile."""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from service.local import LocalServer
from tests.service.fakes import GOOD

CAVIAR = str(Path(sys.executable).parent / "caviar")
FILE_LIMIT = 100_000  # bytes: CAVIAR_MAX_DATASET_FILE_BYTES of this server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    data = tmp_path_factory.mktemp("hostile")
    datasets = data / "datasets"
    datasets.mkdir()
    (datasets / "nolabel.csv").write_text("a,b\n1,2\n3,4\n")
    (datasets / "words.csv").write_text("word,label\n" + "".join(f"w{i},{i % 2}\n" for i in range(20)))
    (datasets / "big.csv").write_text("a,label\n" + "1,0\n" * (FILE_LIMIT // 4 + 10))
    with open(datasets / "pickled.npz", "wb") as f:
        np.savez(f, x=np.array([{"evil": 1}], dtype=object), y=np.zeros(1))
    (datasets / "raw.npz").write_bytes(pickle.dumps({"x": 1}))
    np.savez(datasets / "objects_y.npz", x=np.ones((4, 2)), y=np.array([{"evil": 1}] * 4, dtype=object))
    np.savez(datasets / "flat_x.npz", x=np.ones(4), y=np.zeros(4))
    np.savez(datasets / "ragged.npz", x=np.ones((40, 3)), y=np.zeros(30))
    (datasets / "header_only.csv").write_text("a,label\n")
    server = LocalServer(data, None, env={"CAVIAR_MAX_DATASET_FILE_BYTES": str(FILE_LIMIT)}).start()
    try:
        yield server
    finally:
        server.stop()


def problem(r: httpx.Response, status: int, field: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body.get("field") == field, body
    return body


def while_healthy(server: LocalServer, request: Any) -> tuple[httpx.Response, float, int]:
    """Send ``request`` from a thread while polling /healthz: (its response, its seconds, health answers meanwhile)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        future = pool.submit(request)
        healthy = 0
        while not future.done():
            assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200  # never stalled
            healthy += 1
        return future.result(), time.monotonic() - t0, healthy


def test_a_1_mib_yaml_body_is_refused_fast_without_stalling_the_server(server: LocalServer) -> None:
    body = b"name: big\ntrainable: mlp_bn_softmax\nfixed: {x: [" + b"1," * 520_000 + b"1]}\n"
    assert len(body) < 1 << 20
    r, seconds, _ = while_healthy(server, lambda: httpx.post(f"{server.url}/v1/studies", content=body,
                                                             headers={"Content-Type": "application/yaml"}, timeout=60))
    assert "YAML nodes" in problem(r, 413, "body")["detail"]
    assert seconds < 10, seconds  # was 35 s; about 0.1 s here


@pytest.mark.parametrize(("body", "kind"), [(b"name: 2024-01-01\n", "application/yaml"), (b"1: x\nname: a\n", "Application/YAML"),
                                            (b'{"search_space": {"\\ud800": 1}}', "application/json")], ids=["date", "int-key", "surrogate"])
def test_bodies_json_cannot_carry_are_422_with_or_without_a_key(server: LocalServer, body: bytes, kind: str) -> None:
    for key in ({}, {"Idempotency-Key": "odd-1"}):
        r = httpx.post(f"{server.url}/v1/studies", content=body, headers={"Content-Type": kind, **key}, timeout=30)
        assert "only JSON values" in problem(r, 422, "body")["detail"]


def test_a_yaml_alias_bomb_with_an_idempotency_key_costs_nothing(server: LocalServer) -> None:
    levels = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    body = ("\n".join(levels) + "\n").encode()
    rss = psutil.Process(server.proc.pid).memory_info().rss  # type: ignore[union-attr]
    r, seconds, _ = while_healthy(server, lambda: httpx.post(
        f"{server.url}/v1/studies", content=body, timeout=60,
        headers={"Content-Type": "application/yaml", "Idempotency-Key": "bomb-1"}))
    assert "aliases" in problem(r, 422, "body")["detail"] and seconds < 10
    assert psutil.Process(server.proc.pid).memory_info().rss < rss + (200 << 20)  # type: ignore[union-attr]
    ok = httpx.post(f"{server.url}/v1/studies", json=GOOD, headers={"Idempotency-Key": "bomb-1"}, timeout=30)
    assert ok.status_code == 201  # the refused body did not use up the key


@pytest.mark.parametrize(("path", "rule"), [("a\u0000.csv", "NUL"), ("x" * 300 + ".csv", "at most 255 bytes")], ids=["nul", "long"])
def test_bad_dataset_paths_are_422_and_the_connection_lives_on(server: LocalServer, path: str, rule: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/v1/studies", json={**GOOD, "dataset": {"name": "file", "path": path}})
        assert rule in problem(r, 422, "dataset.path")["detail"]
        assert client.get("/healthz").status_code == 200  # same keep-alive connection


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"resources_per_trial": {"cpu": 1e-9}}, "resources_per_trial.cpu", "greater than or equal to 0.01"),
        ({"dataset": {"name": "digits", "seed": 2**32}}, "dataset.seed", "less than or equal to 4294967295"),
        ({"fixed": {"epochs": 2, "seed": 2**64}}, "fixed.seed", "less than or equal to 4294967295"),
        ({"dataset": {"name": "synthetic", "n_features": 5, "n_informative": 8}}, "dataset.n_informative", "n_informative (8) must be <= n_features (5)"),
        ({"dataset": {"name": "synthetic", "n_samples": 1_000_000, "n_features": 10_000, "n_informative": 10}}, "dataset.n_features", "74.5 GiB as float64"),
        ({"dataset": {"name": "file", "path": "nolabel.csv"}}, "dataset.target", "column 'label' is not in nolabel.csv"),
        ({"dataset": {"name": "file", "path": "words.csv"}}, "dataset.path", "must be numeric; not numeric: word"),
        ({"dataset": {"name": "file", "path": "pickled.npz"}}, "dataset.path", "'x' of pickled.npz must be numeric, not object"),
        ({"dataset": {"name": "file", "path": "objects_y.npz"}}, "dataset.path", "'y' of objects_y.npz must be numbers or strings"),
        ({"dataset": {"name": "file", "path": "flat_x.npz"}}, "dataset.path", "needs a sample and a feature axis"),
        ({"dataset": {"name": "file", "path": "ragged.npz"}}, "dataset.path", "'x' has 40 samples and 'y' 30"),
        ({"dataset": {"name": "file", "path": "header_only.csv"}}, "dataset.path", "has a header but no rows"),
        ({"dataset": {"name": "file", "path": "raw.npz"}}, "dataset.path", "cannot read raw.npz"),
        ({"dataset": {"name": "file", "path": "big.csv"}}, "dataset.path", "the limit is 0 MiB"),
        ({"search_space": {}}, "search_space", "at least one parameter"),
    ],
    ids=["cpu", "dataset-seed", "fixed-seed", "informative", "too-big", "label", "text", "pickled-npz", "objects-y", "flat-x", "ragged",
         "header-only", "pickle", "file-size", "empty-space"],
)
def test_what_can_be_known_at_submission_is_refused_then(server: LocalServer, change: dict[str, Any], field: str, rule: str) -> None:
    r = httpx.post(f"{server.url}/v1/studies", json={**GOOD, **change}, timeout=30)
    assert rule in problem(r, 422, field)["detail"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("trials/t0/adjust", b'{"lr": NaN}', "lr"),
        ("trials/t0/fork", b'{"from_epoch": 1, "changes": {"lr": Infinity}}', "changes.lr"),
        ("refine", b'{"top_k": 2, "fixed": {"epochs": 2, "seed": -Infinity}}', "fixed.seed"),
        ("refine", b'{"search_space": [{"x": [1, "NaN", NaN]}]}', "search_space.0.x.2"),
        ("extend", b'{"num_trials": NaN}', "num_trials"),
        ("trials/t0/adjust", b'{"weight_decay": 1e-400, "lr": 1E+999}', "lr"),
    ],
    ids=["adjust", "fork", "refine", "refine-nested", "extend", "past-a-double"],
)
def test_nan_and_infinity_in_any_json_body_are_422_naming_the_field_and_nothing_is_stored(
        server: LocalServer, path: str, body: bytes, field: str) -> None:
    """Python's JSON parser, which FastAPI's routes use, reads NaN and infinities: JSON has neither and
    PostgreSQL cannot store them (a panda adjustment or a refined definition would be stored, then fail)."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        study = client.post("/v1/studies", json=GOOD).json()["id"]
        before = client.get("/v1/studies", params={"limit": 1}).json()["total"]
        r = client.post(f"/v1/studies/{study}/{path}", content=body, headers={"Content-Type": "application/json"})
        assert "finite number" in problem(r, 422, field)["detail"]
        assert client.get("/v1/studies", params={"limit": 1}).json()["total"] == before
        assert client.get(f"/v1/studies/{study}").json()["status"] == "queued"
        # the word in a string is no number: the same route answers as it would without it
        finite = body.replace(b"NaN", b"1").replace(b"Infinity", b"1").replace(b"1E+999", b"1")
        ok = client.post(f"/v1/studies/{study}/{path}", content=finite,
                         headers={"Content-Type": "application/json"})
        assert ok.status_code != 422 or "finite" not in ok.text, ok.text


@pytest.mark.parametrize("header", ["Token cav_x", "Basic dXNlcjpwYXNz", "cav_x", "Bearer"], ids=["token", "basic", "bare", "empty"])
def test_a_malformed_authorization_header_is_401_even_on_loopback(server: LocalServer, header: str) -> None:
    r = httpx.get(f"{server.url}/v1/studies", headers={"Authorization": header})
    assert "Bearer <token>" in problem(r, 401, "Authorization")["detail"]
    assert httpx.get(f"{server.url}/v1/studies").status_code == 200  # no header on loopback: the owner 'local'


def test_405_lists_every_method_and_the_schema_says_auth_is_optional_on_loopback(server: LocalServer) -> None:
    r = httpx.options(f"{server.url}/v1/studies")
    problem(r, 405, None)
    assert r.headers["Allow"] == "GET, HEAD, POST"
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert schema["paths"]["/v1/studies"]["post"]["security"][0] == {}


@pytest.mark.parametrize("port", ["--ray-port=16390", "--dashboard-port=18265", "--ray-port=80"])
def test_serve_refuses_ray_ports_in_the_worker_range_in_one_line(tmp_path: Path, port: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([CAVIAR, "serve", "--port", "1", port], capture_output=True, text=True, timeout=60,
                       env={**env, "CAVIAR_DATA_DIR": str(tmp_path)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "outside 10002-19999" in r.stderr, r.stderr


def test_the_api_docs_load_nothing_from_the_internet(server: LocalServer) -> None:
    import re

    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{server.url}{page}").text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and not [a for a in assets if a.startswith(("http://", "https://", "//"))], assets
        for asset in assets:  # each served by the API itself
            r = httpx.get(f"{server.url}{asset}")
            assert r.status_code == 200 and len(r.content) > 1000, asset


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CAVIAR, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_the_cli_reads_as_a_person_expects(server: LocalServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n  x: 1\n")
    r = _cli("submit", str(bad), "--url", server.url)
    assert r.returncode == 2 and r.stderr == f"error: {bad}:2:4: expected ',' or ']', but got ':'\n"
    # --token after the command, and a long error stays one line off a terminal
    r = _cli("status", "nope", "--url", server.url, "--token", "cav_" + "x" * 200)
    assert r.returncode == 2 and r.stderr == "error: the bearer token is unknown or revoked\n"
    # a server on another port says which URL the CLI needs; token create says where it wrote
    assert f"export CAVIAR_URL={server.url}" in server.log_path.read_text()
    made = _cli("token", "create", "--owner", "someone", CAVIAR_DATA_DIR=str(server.data_dir))
    assert made.returncode == 0 and f"in sqlite:///{server.data_dir}/caviar.db" in made.stderr
    # tables off a terminal are as wide as their content: nothing cut; --url also goes before the command
    from service.store import Store

    sid = httpx.post(f"{server.url}/v1/studies", json=GOOD, timeout=30).json()["id"]
    config = {f"parameter_number_{i}": 0.123456789 * i for i in range(8)}
    Store(f"sqlite:///{server.data_dir / 'caviar.db'}").trials.upsert(sid, "t1", config=config, state="failed",
                                                                    error="ValueError: " + "a long reason " * 12)
    out = _cli("--url", server.url, "trials", sid)
    assert out.returncode == 0 and "parameter_number_7=0.8642" in out.stdout and "a long reason " * 12 in out.stdout, out.stdout
    assert "…" not in out.stdout
    listed = _cli("trainables", "--url", server.url)
    assert "For benchmarks" in next(line for line in listed.stdout.splitlines() if line.startswith("busy_work"))
