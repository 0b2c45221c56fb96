"""Shared fixtures.

- an isolated CAVIAR_DATA_DIR per session;
- ``ray_head``: one Ray head for the whole session, started by the tests with ``ray start --head
  --block`` on free loopback ports, with its own auth token, and stopped (only it) afterwards;
- ``api``: ``caviar serve`` in a subprocess (uvicorn over HTTP) against that head and a SQLite file;
- ``postgres_url``: a fresh PostgreSQL database when CAVIAR_TEST_POSTGRES_URL is set, else a skip.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session", autouse=True)
def caviar_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test sees a fresh CAVIAR_DATA_DIR (MNIST-1D is generated into it once per session)."""
    path = tmp_path_factory.mktemp("caviar-data")
    (path / "datasets").mkdir()
    os.environ["CAVIAR_DATA_DIR"] = str(path)
    return path


@dataclass
class RayHead:
    gcs_address: str
    dashboard: str
    env: dict[str, str] = field(default_factory=dict)


class HeadProcess:
    """``ray start --head --block`` on fixed loopback ports; ``stop()`` (SIGTERM) stops only its own
    processes, and ``start()`` brings a fresh head up on the same ports (a restarted cluster)."""

    def __init__(self, log_dir: Path) -> None:
        self.gcs, self.dash = free_port(), free_port()
        self.ports = [free_port() for _ in range(4)]
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(16),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        os.environ.update(self.env)  # this process talks to the head too (Jobs API, ray.init)
        self.log_dir = log_dir
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        self.proc: subprocess.Popen[bytes] | None = None
        self.head = RayHead(gcs_address=f"127.0.0.1:{self.gcs}", dashboard=f"http://127.0.0.1:{self.dash}", env=self.env)

    def start(self) -> RayHead:
        agent, grpc, metrics, client = self.ports
        log = open(self.log_dir / f"head-{time.time_ns()}.log", "w")
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--port={self.gcs}", "--node-ip-address=127.0.0.1",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}", "--include-dashboard=true", "--num-cpus=2",
             "--disable-usage-stats",
             # own agent ports too, so a Ray head the user already runs on this machine cannot collide
             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
             f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}",
             # and its own temp dir: Ray's jobs find "their" cluster through <temp dir>/ray_current_cluster,
             # which in the shared /tmp/ray names whichever head started last on this machine
             f"--temp-dir={self.temp_dir}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **self.env},
        )
        from service.ray_adapter import RayJobs

        deadline = time.time() + 90
        while not RayJobs(self.head.dashboard).ping():
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                raise RuntimeError(f"the test Ray head did not start; see {log.name}")
            time.sleep(1)
        return self.head

    def crash(self) -> None:
        """kill -9 the head's whole process group, as a crash would (SIGTERM lets Ray drain for up to
        30 s, during which a nearly finished study may simply finish)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    head = HeadProcess(tmp_path_factory.mktemp("ray"))
    try:
        yield head.start()
    finally:
        head.stop()


@pytest.fixture(scope="session")
def ray_cluster(ray_head: RayHead, caviar_data_dir: Path) -> Iterator[None]:
    """This process connected to the session's Ray head as a driver."""
    import ray

    ray.init(address=ray_head.gcs_address, runtime_env={"env_vars": {"CAVIAR_DATA_DIR": str(caviar_data_dir)}},
             logging_level="WARNING", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


class Api:
    """`caviar serve` in a subprocess; ``kill()`` is kill -9, ``start()`` starts it again."""

    def __init__(self, data_dir: Path, head: RayHead, database_url: str | None = None, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir, self.head, self.database_url = data_dir, head, database_url
        self.args, self.extra_env = args, env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.head.env, "CAVIAR_DATA_DIR": str(self.data_dir), "RAY_ADDRESS": self.head.dashboard, **self.extra_env}
        if self.database_url:
            env["CAVIAR_DATABASE_URL"] = self.database_url
        self.log = open(self.data_dir / f"api-{time.time_ns()}.log", "w")
        self.proc = subprocess.Popen([str(BIN / "caviar"), "serve", "--port", str(self.port), *self.args], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"caviar serve did not start: {Path(self.log.name).read_text()[-2000:]}")
            time.sleep(0.3)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def no_ray() -> RayHead:
    """A Ray address where nothing listens: `caviar serve` starts no head, studies stay queued."""
    return RayHead(gcs_address="", dashboard=f"http://127.0.0.1:{free_port()}")


@pytest.fixture(scope="session")
def api(ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory, caviar_data_dir: Path) -> Iterator[Api]:
    server = Api(caviar_data_dir, ray_head)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new database on the PostgreSQL named by CAVIAR_TEST_POSTGRES_URL (an admin URL), dropped afterwards."""
    admin = os.environ.get("CAVIAR_TEST_POSTGRES_URL")
    if not admin:
        pytest.skip("PostgreSQL tests need CAVIAR_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres); .ci/run sets it")
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
def postgres_url() -> Iterator[str]:
    """One fresh PostgreSQL database for the session's store tests."""
    with fresh_postgres_database() as url:
        yield url
