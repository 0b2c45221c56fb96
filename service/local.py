"""Caviar's processes on this machine, on loopback: a Ray head and ``caviar serve``.

``caviar serve`` starts its Ray head with :func:`head_start_args`; the tests and the benchmarks start
theirs with :class:`LocalHead` and their servers with :class:`LocalServer`, so a test, a benchmark
and a user's own head never collide (own ports, own token, own Ray temp dir) and each stops only
what it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from service.client import Client

if TYPE_CHECKING:
    from service.jobs import RayJobs

BIN = Path(sys.executable).parent
T = TypeVar("T")
STOP_GRACE_S = 10.0  # LocalHead.stop: how long the head may drain before what is left of it is killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], T], timeout: float, what: str = "the condition", interval: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy (returned), or TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)


def bindable(port: int) -> bool:
    """Whether a server could listen on ``port`` on loopback now (as servers do, with SO_REUSEADDR:
    connections of a killed process left in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def ray_temp_dir() -> str:
    """A Ray temp dir of the head's own. Ray's jobs find their cluster through <temp dir>/ray_current_cluster,
    which in the shared /tmp/ray names whichever head started last on this machine. Short, as Ray's
    socket paths must fit 107 bytes."""
    return tempfile.mkdtemp(prefix="ray-", dir="/tmp")


def head_start_args(gcs_port: int, dashboard_port: int, temp_dir: str, *, num_cpus: int | None = None, own_ports: bool = False) -> list[str]:
    """``ray start --head`` bound to loopback: whoever reaches Ray's ports can run code on it.
    ``own_ports`` also picks free ports for the dashboard agent, metrics and the client server."""
    args = [str(BIN / "ray"), "start", "--head", f"--port={gcs_port}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    if own_ports:
        args += [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--metrics-export-port={free_port()}", f"--ray-client-server-port={free_port()}"]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    return args


class LocalHead:
    """``ray start --head --block`` on free loopback ports with its own token. ``start()`` brings it
    up (again on the same ports after ``stop()`` or ``crash()``: a restarted cluster)."""

    def __init__(self, log_dir: Path, num_cpus: int | None = None, token: str | None = None) -> None:
        self.gcs, self.dash = free_port(), free_port()
        self.gcs_address, self.dashboard = f"127.0.0.1:{self.gcs}", f"http://127.0.0.1:{self.dash}"
        self.token = token or secrets.token_hex(16)
        # what every client of this head needs in its environment (Ray 2.60 token auth)
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0"}
        self.log_dir, self.num_cpus = log_dir, num_cpus
        self.temp_dir = ray_temp_dir()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> LocalHead:
        wait_until(lambda: bindable(self.gcs) and bindable(self.dash), 60, "the head's ports to be free", interval=0.2)
        # the agent's, metrics' and client server's ports are picked again at each start: only the GCS and
        # dashboard ports are what clients know, and a port free at the first start may be taken by now
        self.args = head_start_args(self.gcs, self.dash, self.temp_dir, num_cpus=self.num_cpus, own_ports=True)
        log_path = self.log_dir / f"ray-head-{time.time_ns()}.log"
        with open(log_path, "w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([*self.args, "--block"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **self.env})
        jobs = self.jobs()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the Ray head exited; see {log_path}")
            # the dashboard answers before the head's raylet has registered its CPUs
            try:
                return jobs.ping() and jobs.largest_node().get("CPU", 0.0) > 0
            except Exception:
                return False

        wait_until(up, timeout, f"the Ray head and its CPUs (see {log_path})", interval=0.5)
        return self

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def jobs(self) -> RayJobs:
        """Caviar's own client of this head's Jobs API."""
        from service.jobs import RayJobs
        from service.settings import Settings

        return RayJobs(Settings(ray_address=self.dashboard, ray_auth_token=self.token, data_dir=self.log_dir))

    def crash(self) -> None:
        """kill -9 the head's whole process group, as a crash would (SIGTERM lets Ray drain for up to 30 s)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """Stop the head's processes, and remove its Ray temp dir (sessions' sockets and logs)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
            try:  # gracefully (Ray gives busy processes up to 30 s), but a test's head need not drain: kill what is left
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class LocalServer:
    """``caviar serve`` on a free port with its own data directory, against ``head`` or, with
    ``head=None``, with no Ray at all (a Ray address where nothing listens: studies stay queued)."""

    def __init__(self, data_dir: Path, head: LocalHead | None, *, database_url: str | None = None, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir, self.head, self.database_url = data_dir, head, database_url
        self.ray_address = head.dashboard if head else f"http://127.0.0.1:{free_port()}"
        self.args, self.extra_env = args, env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "caviar-serve.log"
        (data_dir / "datasets").mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str]:
        env = {**os.environ, **(self.head.env if self.head else {}), "CAVIAR_DATA_DIR": str(self.data_dir),
               "RAY_ADDRESS": self.ray_address, "CAVIAR_DRAIN_S": "0", **self.extra_env}
        if self.database_url:
            env["CAVIAR_DATABASE_URL"] = self.database_url
        return env

    def start(self, timeout: float = 60) -> LocalServer:
        with open(self.log_path, "a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([str(BIN / "caviar"), "serve", "--port", str(self.port), *self.args], env=self.environment(),
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        probe = Client(self.url)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"caviar serve exited:\n{self.log_path.read_text()[-3000:]}")
            return probe.healthy()

        try:
            wait_until(up, timeout, "caviar serve", interval=0.2)
        finally:
            probe.close()
        return self

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
