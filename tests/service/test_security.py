"""Auth, owner isolation, quotas, idempotent submission, input limits and graceful shutdown, over
HTTP. The API runs in-process (the real app and SQLite store, uvicorn in a thread, a fake of Ray's
side: studies stay queued, which is all these need); what only a process can show (refusing to
start, SIGTERM) runs `caviar serve` itself."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.client import Client
from service.local import LocalServer, wait_until
from tests.service.fakes import GOOD, inprocess_api

CAVIAR = str(Path(sys.executable).parent / "caviar")


def _dir(tmp_path: Path) -> Path:
    (tmp_path / "datasets").mkdir(exist_ok=True)
    return tmp_path


def cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CAVIAR, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CAVIAR_DATA_DIR": str(data_dir), **env})


def token(data_dir: Path, owner: str) -> str:
    r = cli(data_dir, "token", "create", "--owner", owner)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def bearer(t: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {t}"}


def assert_problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert {"type", "title", "status", "detail"} <= body.keys() and body["status"] == status
    if field is not None:
        assert body["field"] == field, body
    return body


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., Client]]:
    """Start the API in-process with these settings (e.g. auth="required"); stopped afterwards."""
    with contextlib.ExitStack() as stack:

        def start(**settings: Any) -> Client:
            client, _ = stack.enter_context(inprocess_api(_dir(tmp_path), **settings))
            return client

        yield start


def test_serving_beyond_loopback_needs_a_token_or_insecure(tmp_path: Path) -> None:
    d = _dir(tmp_path)
    r = subprocess.run([CAVIAR, "serve", "--host", "0.0.0.0", "--port", "1"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "CAVIAR_DATA_DIR": str(d), "RAY_ADDRESS": LocalServer(d, None).ray_address})
    assert r.returncode == 2
    assert "refusing to serve on 0.0.0.0 without an API token" in r.stderr and "caviar token create" in r.stderr
    api = LocalServer(d, None, args=("--host", "0.0.0.0", "--insecure")).start()
    try:
        assert httpx.get(f"{api.url}/v1/studies").status_code == 200  # explicitly insecure: open
    finally:
        api.stop()


def test_tokens_owners_and_isolation(tmp_path: Path, server: Callable[..., Client]) -> None:
    d = _dir(tmp_path)
    alice, bob = token(d, "alice"), token(d, "bob")
    assert alice.startswith("cav_") and alice != bob
    listing = cli(d, "token", "list").stdout
    assert "alice" in listing and "bob" in listing and alice not in listing
    api = server(auth="required")
    assert httpx.get(f"{api.url}/healthz").status_code == 200  # the only open endpoint
    for method, path in [("GET", "/v1/studies"), ("POST", "/v1/studies"), ("GET", "/v1/trainables"), ("GET", "/readyz"),
                         ("GET", "/openapi.json"), ("GET", "/v1/studies/x/best")]:
        body = assert_problem(httpx.request(method, f"{api.url}{path}"), 401, "Authorization")
        assert "bearer token" in body["detail"]
    assert_problem(httpx.get(f"{api.url}/v1/studies", headers=bearer("cav_forged")), 401)
    # only hashes are stored (read by another process: opening and closing the database file here
    # would drop this process's POSIX locks on it, which the in-process server's SQLite holds)
    for t in (alice, bob):
        assert subprocess.run(["grep", "-cF", t, str(d / "caviar.db")], capture_output=True).returncode == 1

    r = httpx.post(f"{api.url}/v1/studies", json=GOOD, headers=bearer(alice))
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["owner"] == "alice"
    for path in ("", "/trials", "/best"):
        assert httpx.get(f"{api.url}/v1/studies/{sid}{path}", headers=bearer(alice)).status_code == 200
        assert_problem(httpx.get(f"{api.url}/v1/studies/{sid}{path}", headers=bearer(bob)), 404)
    assert_problem(httpx.post(f"{api.url}/v1/studies/{sid}/cancel", headers=bearer(bob)), 404)
    assert [s["id"] for s in httpx.get(f"{api.url}/v1/studies", headers=bearer(alice)).json()["items"]] == [sid]
    assert httpx.get(f"{api.url}/v1/studies", headers=bearer(bob)).json() == {"items": [], "total": 0, "offset": 0, "limit": 50}
    # the CLI sends the token
    out = cli(d, "--token", alice, "status", sid, CAVIAR_URL=api.url)
    assert out.returncode == 0 and sid in out.stdout
    out = cli(d, "status", sid, CAVIAR_URL=api.url, CAVIAR_TOKEN=bob)
    assert out.returncode == 2 and out.stderr.strip() == f"error: no study '{sid}'"
    # revoked: 401 from then on
    (token_id,) = [line.split()[1] for line in cli(d, "token", "list").stdout.splitlines() if "bob" in line]
    assert cli(d, "token", "revoke", token_id).returncode == 0
    assert_problem(httpx.get(f"{api.url}/v1/studies", headers=bearer(bob)), 401)
    assert httpx.get(f"{api.url}/v1/studies", headers=bearer(alice)).status_code == 200


def test_per_owner_quotas_give_429(tmp_path: Path, server: Callable[..., Client]) -> None:
    d = _dir(tmp_path)
    alice, bob = token(d, "alice"), token(d, "bob")
    api = server(auth="required", quota_active_studies=2, quota_concurrent_trials=5)

    def post(t: str, concurrent: int) -> httpx.Response:
        return httpx.post(f"{api.url}/v1/studies", json={**GOOD, "budget": {"num_trials": 4, "max_concurrent_trials": concurrent}}, headers=bearer(t))

    assert post(alice, 2).status_code == 201
    body = assert_problem(post(alice, 4), 429)
    assert "runs up to 2 concurrent trials; this study adds 4" in body["detail"] and "quota is 5" in body["detail"]
    first = post(alice, 2)
    assert first.status_code == 201
    body = assert_problem(post(alice, 1), 429)
    assert "has 2 studies queued or running; the quota is 2" in body["detail"]
    assert post(bob, 2).status_code == 201  # quotas are per owner
    # a cancelled study frees its share
    assert httpx.post(f"{api.url}/v1/studies/{first.json()['id']}/cancel", headers=bearer(alice)).status_code == 200
    assert post(alice, 1).status_code == 201
    assert httpx.get(f"{api.url}/v1/studies", headers=bearer(alice)).json()["total"] == 3  # 429s stored nothing


def test_idempotency_keys(tmp_path: Path, server: Callable[..., Client]) -> None:
    api = server()
    url = f"{api.url}/v1/studies"
    key = {"Idempotency-Key": "ci-3f2a9c1"}
    first = httpx.post(url, json=GOOD, headers=key)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = httpx.post(url, content=yaml.safe_dump(GOOD), headers={**key, "Content-Type": "application/yaml"})  # same body, as YAML
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    body = assert_problem(httpx.post(url, json={**GOOD, "name": "other"}, headers=key), 422, "Idempotency-Key")
    assert "already used with a different body" in body["detail"]
    assert_problem(httpx.post(url, json=GOOD, headers={"Idempotency-Key": "has space"}), 422)
    # a body that fails validation does not burn the key
    k2 = {"Idempotency-Key": "k2"}
    assert_problem(httpx.post(url, json={**GOOD, "trainable": "nope"}, headers=k2), 422, "trainable")
    assert httpx.post(url, json=GOOD, headers=k2).status_code == 201
    assert httpx.get(url).json()["total"] == 2

    # 100 concurrent posts with one key: exactly one study
    def post(_: int) -> httpx.Response:
        return httpx.post(url, json={**GOOD, "name": "burst"}, headers={"Idempotency-Key": "burst-1"}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(post, range(100)))
    codes = [r.status_code for r in responses]
    assert codes.count(201) == 1 and set(codes) <= {201, 200, 409}, codes
    for r in responses:
        if r.status_code == 409:
            assert_problem(r, 409, "Idempotency-Key")
            assert r.headers["Retry-After"] == "1"
    ids = {r.json()["id"] for r in responses if r.status_code in (200, 201)}
    assert len(ids) == 1
    burst = [s for s in httpx.get(url, params={"limit": 200}).json()["items"] if s["name"] == "burst"]
    assert [s["id"] for s in burst] == list(ids)

    # the CLI: --idempotency-key makes a re-run of the same submit a no-op
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump({**GOOD, "name": "from-ci"}))
    outs = [cli(tmp_path, "submit", str(f), "--idempotency-key", "sha-abc123", CAVIAR_URL=api.url) for _ in range(2)]
    assert all(o.returncode == 0 for o in outs), outs[0].stderr
    assert outs[0].stdout.split()[1] == outs[1].stdout.split()[1]
    assert len([s for s in httpx.get(url).json()["items"] if s["name"] == "from-ci"]) == 1


def test_input_limits(tmp_path: Path, server: Callable[..., Client]) -> None:
    api = server()
    url = f"{api.url}/v1/studies"
    big = json.dumps({**GOOD, "padding": "x" * (1 << 20)})
    assert_problem(httpx.post(url, content=big, headers={"Content-Type": "application/json"}), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
        for _ in range(40):
            yield b" " * 65536

    assert_problem(httpx.post(url, content=chunks(), headers={"Content-Type": "application/json"}), 413)
    space = {f"p{i}": {"type": "float", "low": 0, "high": 1} for i in range(65)}
    body = assert_problem(httpx.post(url, json={**GOOD, "search_space": space}), 422, "search_space")
    assert "at most 64 parameters (got 65)" in body["detail"]
    for path, value, field in [
        ("fixed", {"epochs": 1001}, "fixed.epochs"),
        ("budget", {"num_trials": 10_001}, "budget.num_trials"),
        ("budget", {"max_failures": 11}, "budget.max_failures"),
        ("trainable", "os:system", "trainable"),
        ("trainable", "trainables.builtin:train_mlp", "trainable"),
        ("dataset", {"name": "file", "path": "/etc/passwd.csv"}, "dataset.path"),
        ("search_space", "../presets/seven_key", "search_space"),
    ]:
        assert_problem(httpx.post(url, json={**GOOD, path: value}), 422, field)
    # what a fuzzer or a hostile client sends: a clear 422, never a 500
    for content, kind, field in [("[" * 100_000, "application/json", "body"), ("[" * 100_000, "application/yaml", "body"),
                                 ('{"name": NaN}', "application/json", "name"), ("name: .nan\n", "application/yaml", "body")]:
        assert_problem(httpx.post(url, content=content, headers={"Content-Type": kind}), 422, field)
    for space, rule in [
        ({"lr": {"type": "float", "low": 0.001, "high": 0.1, "step": 1e-300}}, "step is too small"),
        ({"width": {"type": "int", "low": 1, "high": 10**32}}, "within ±2**53"),
        ({"width": {"type": "int", "low": 1, "high": 100_000}}, "100000 is not a valid 'width': Input should be less than or equal to 8192"),
        ({"optimizer": {"type": "categorical", "choices": ["adam", "lbfgs"]}}, "'lbfgs' is not a valid 'optimizer'"),
    ]:
        body = assert_problem(httpx.post(url, json={**GOOD, "search_space": space}), 422, f"search_space.{next(iter(space))}")
        assert rule in body["detail"], body
    assert_problem(httpx.post(url, json={**GOOD, "sampler": {"seed": 2**40}}), 422, "sampler.seed")
    (tmp_path / "outside.csv").write_text("a,label\n1,0\n")
    (tmp_path / "datasets" / "link.csv").symlink_to(tmp_path / "outside.csv")
    body = assert_problem(httpx.post(url, json={**GOOD, "dataset": {"name": "file", "path": "link.csv"}}), 422, "dataset.path")
    assert "outside the data directory" in body["detail"]
    assert httpx.get(url).json()["total"] == 0
    assert_problem(httpx.get(f"{api.url}/v2/nothing"), 404)
    assert_problem(httpx.delete(url), 405)


def test_sigterm_drains_then_exits(tmp_path: Path) -> None:
    api = LocalServer(_dir(tmp_path), None, env={"CAVIAR_DRAIN_S": "3"}).start()
    try:
        sid = httpx.post(f"{api.url}/v1/studies", json=GOOD).json()["id"]
        assert api.proc is not None
        api.proc.send_signal(signal.SIGTERM)
        # load balancers stop sending first: /readyz says draining while requests are still served
        r = wait_until(lambda: (x := httpx.get(f"{api.url}/readyz")).status_code == 503 and x, 10, "/readyz to say draining")
        assert r.json()["status"] == "draining"
        assert httpx.get(f"{api.url}/v1/studies/{sid}").status_code == 200
        assert api.proc.wait(timeout=30) == 0
    finally:
        api.stop()
    with sqlite3.connect(tmp_path / "caviar.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT status FROM caviar_studies WHERE id = ?", (sid,)).fetchone() == ("queued",)
