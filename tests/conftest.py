"""Shared fixtures, on the harness the benchmarks use too (``service.local``).

- an isolated CAVIAR_DATA_DIR per session;
- ``ray_head``: one Ray head for the whole session (``LocalHead``: free loopback ports, its own auth
  token and temp dir), stopped (only it) afterwards;
- ``api``: ``caviar serve`` in a subprocess (uvicorn over HTTP) against that head and a SQLite file;
- ``postgres_url``: a fresh PostgreSQL database when CAVIAR_TEST_POSTGRES_URL is set; in CI
  (``CI=true``) its absence is an error, elsewhere a skip that says why.
"""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from service.local import LocalHead, LocalServer

PLUGINS = Path(__file__).parent / "plugins"  # a plug-in trainable, found through its entry point (its dist-info)
sys.path.insert(0, str(PLUGINS))  # for this process; the Ray head and servers get it on PYTHONPATH
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH")) if p)
# the session's Ray token, in this process's environment before Ray is first imported: tests that
# connect to the session's head as a Ray driver (ray.init) authenticate with it
SESSION_RAY_TOKEN = secrets.token_hex(16)
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": SESSION_RAY_TOKEN})
# object-store credentials as every Ray node and the API would have them (service.storage): the
# session's Ray head and servers inherit them; the S3-compatible server (moto) accepts any
os.environ.update({"AWS_ACCESS_KEY_ID": "caviar-test", "AWS_SECRET_ACCESS_KEY": "caviar-test-secret",
                   "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})


@pytest.fixture(scope="session", autouse=True)
def caviar_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test sees a fresh CAVIAR_DATA_DIR (MNIST-1D is generated into it once per session)."""
    path = tmp_path_factory.mktemp("caviar-data")
    (path / "datasets").mkdir()
    os.environ["CAVIAR_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHead]:
    head = LocalHead(tmp_path_factory.mktemp("ray"), num_cpus=2, token=SESSION_RAY_TOKEN)
    try:
        yield head.start()
    finally:
        head.stop()


@pytest.fixture(scope="session")
def ray_cluster(ray_head: LocalHead, caviar_data_dir: Path) -> Iterator[None]:
    """This process connected to the session's Ray head as a driver."""
    import ray

    ray.init(address=ray_head.gcs_address, runtime_env={"env_vars": {"CAVIAR_DATA_DIR": str(caviar_data_dir)}},
             logging_level="WARNING", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def api(ray_head: LocalHead, caviar_data_dir: Path) -> Iterator[LocalServer]:
    server = LocalServer(caviar_data_dir, ray_head)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def alive_trial_actors(head: LocalHead) -> list[Any]:
    """The head's alive Tune trial actors (``ImplicitFunc``), through Ray's State API."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    actors: list[Any] = StateApiClient(head.dashboard, headers={"Authorization": f"Bearer {head.token}"}).list(
        StateResource.ACTORS, options=ListApiOptions(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000),
        raise_on_missing_output=False)
    return [a for a in actors if "ImplicitFunc" in (getattr(a, "class_name", None) or "")]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, reason: str) -> None:
    """Skip with ``reason`` on a developer's machine; fail in CI, where everything must run."""
    if available:
        return
    if in_ci():
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new database on the PostgreSQL named by CAVIAR_TEST_POSTGRES_URL (an admin URL), dropped afterwards."""
    admin = os.environ.get("CAVIAR_TEST_POSTGRES_URL", "")
    require(bool(admin), "PostgreSQL tests need CAVIAR_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres); .ci/run sets it")
    import psycopg

    name = f"caviar_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-compatible server (moto in server mode) on a free loopback port, stopped afterwards."""
    import subprocess

    import httpx

    from service.local import free_port, wait_until

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1).status_code < 500
        except httpx.HTTPError:
            return proc.poll() is not None  # died: fail below with its log

    try:
        wait_until(up, timeout=60, what="the S3-compatible server")
        assert proc.poll() is None, f"moto server exited: see {log.name}"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def s3_bucket(endpoint: str) -> str:
    """A new bucket on the S3-compatible server; its name."""
    import pyarrow.fs as pafs

    name = f"caviar-{uuid.uuid4().hex[:10]}"
    host = endpoint.split("://", 1)[1]
    pafs.S3FileSystem(endpoint_override=host, scheme="http", allow_bucket_creation=True).create_dir(name)
    return name


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One fresh PostgreSQL database for the session's store tests."""
    with fresh_postgres_database() as url:
        yield url


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"({exc})"
    text = [line for line in text if '"GET /' not in line]  # the pollers' requests drown the rest
    return "\n".join(text[-lines:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """When an end-to-end test fails, its report carries what the processes it started said: the tail
    of each ``caviar serve`` log under its tmp_path (and the session's), and of the newest study
    drivers' job logs of the Ray heads it used. A CI failure is read from CI's output alone."""
    outcome = yield
    report = outcome.get_result()
    if report.when not in ("setup", "call") or not report.failed:
        return
    try:
        _attach_logs(item, report)
    except OSError as exc:  # a log removed meanwhile: the failure itself still reports
        report.sections.append(("caviar logs", f"could not read them: {exc}"))


def _attach_logs(item: pytest.Item, report: pytest.TestReport) -> None:
    args = getattr(item, "funcargs", {})
    roots = [p for p in (args.get("tmp_path"), os.environ.get("CAVIAR_DATA_DIR")) if p]
    serve_logs = {log for root in roots for log in Path(root).rglob("caviar-serve.log")}
    heads = [v for v in args.values() if isinstance(v, LocalHead)] + [v.head for v in args.values() if isinstance(v, LocalServer) and v.head]
    drivers: list[Path] = []
    for head in heads:
        drivers += Path(head.temp_dir).glob("session_*/logs/job-driver-*.log")
    drivers += Path(args["tmp_path"]).rglob("job-driver-*.log") if "tmp_path" in args else []
    newest = sorted({p.resolve() for p in drivers}, key=lambda p: p.stat().st_mtime)[-3:]
    for log in sorted(serve_logs):
        report.sections.append((f"caviar serve log {log}", _tail(log, 60)))
    for log in newest:
        report.sections.append((f"Ray job log {log.name}", _tail(log, 40)))
