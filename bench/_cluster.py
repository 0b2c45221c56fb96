"""What the benchmarks start and stop: a local Ray head of their own and `caviar serve` against it.

Both bind to loopback on free ports, so a benchmark never touches a Ray head or a server the user
already runs, and stops only what it started.
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
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_temp_dir() -> str:
    """A Ray temp dir of the head's own. Ray's jobs find their cluster through <temp dir>/ray_current_cluster,
    which in the shared /tmp/ray names whichever head started last on this machine (another
    benchmark's, the tests', the user's). Short, as Ray's socket paths must fit 107 bytes."""
    return tempfile.mkdtemp(prefix="ray-", dir="/tmp")


class LocalHead:
    """``ray start --head --block`` with its own ports and auth token; ``stop()`` stops only it."""

    def __init__(self, log_dir: Path, num_cpus: int | None = None) -> None:
        self.gcs, self.dash = free_port(), free_port()
        self.gcs_address, self.dashboard = f"127.0.0.1:{self.gcs}", f"http://127.0.0.1:{self.dash}"
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(16),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        os.environ.update(self.env)  # this process is a client of the head too
        self.log = open(log_dir / "ray-head.log", "w")
        cpus = [f"--num-cpus={num_cpus}"] if num_cpus else []
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--port={self.gcs}", "--node-ip-address=127.0.0.1",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash}", "--include-dashboard=true", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--ray-client-server-port={free_port()}", *cpus,
             f"--temp-dir={ray_temp_dir()}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **self.env},
        )
        from service.ray_adapter import RayJobs

        deadline = time.time() + 120
        while not RayJobs(self.dashboard).ping():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise SystemExit(f"the benchmark's Ray head did not start; see {self.log.name}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


class CaviarServer:
    """``caviar serve`` on a free port with its own data directory, against ``head`` or, with
    ``head=None``, with no Ray at all (a Ray address where nothing listens: studies stay queued)."""

    def __init__(self, data_dir: Path, head: LocalHead | None, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (data_dir / "datasets").mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "caviar-serve.log"
        self.log = open(self.log_path, "w")
        ray = head.dashboard if head else f"http://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [str(BIN / "caviar"), "serve", "--port", str(self.port), "--ray-address", ray],
            env={**os.environ, **(head.env if head else {}), "CAVIAR_DATA_DIR": str(data_dir), "CAVIAR_DRAIN_S": "0", **env},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise SystemExit(f"caviar serve did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def submit_and_wait(self, definition: dict[str, Any], poll_s: float = 0.25) -> tuple[str, dict[str, Any], float, float]:
        """POST a study and poll until it ends: (study id, final study, submit time, wall seconds).
        A study that does not complete ends the benchmark with its error."""
        t0 = time.time()
        r = httpx.post(f"{self.url}/v1/studies", json=definition, timeout=60)
        r.raise_for_status()
        sid = r.json()["id"]
        while True:
            study = httpx.get(f"{self.url}/v1/studies/{sid}", timeout=60).json()
            if study["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(poll_s)
        wall = time.time() - t0
        if study["status"] != "completed":
            raise SystemExit(f"study {sid} {study['status']}: {study['error']}")
        return sid, study, t0, wall

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
