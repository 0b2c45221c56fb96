"""`caviar serve` on a fresh machine: no RAY_ADDRESS, so it starts its own Ray head on loopback,
with Ray's token written readable by its owner only."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from service.local import free_port, wait_until

pytestmark = pytest.mark.ray


def test_serve_starts_a_local_head_and_keeps_its_token_private(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    (home / ".ray").mkdir(parents=True)
    token_file = home / ".ray" / "auth_token"
    token_file.write_text("a-token-left-world-readable")
    token_file.chmod(0o644)  # as Ray itself writes it
    port, gcs, dash = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # as on a machine that never ran Ray
    env.update(HOME=str(home), CAVIAR_DATA_DIR=str(data))
    serve = subprocess.Popen([str(Path(sys.executable).parent / "caviar"), "serve", "--port", str(port), "--ray-port", str(gcs),
                              "--dashboard-port", str(dash)], env=env, stdout=(tmp_path / "serve.log").open("w"),
                             stderr=subprocess.STDOUT, start_new_session=True, text=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        try:
            return httpx.get(f"{url}/readyz", timeout=5).json() == {"status": "ready", "store": True, "ray": True}
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 180, "caviar serve with its own Ray head", interval=1)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600  # narrowed
        # token authentication is really on: Ray's Jobs API refuses a request without the token
        assert httpx.get(f"http://127.0.0.1:{dash}/api/jobs/", timeout=10).status_code == 401
        assert httpx.get(f"{url}/v1/trainables").status_code == 200
        # (studies on a token-authenticated head run in every other Ray test; a study submitted here
        # stayed queued in 2 of 4 full runs of this suite, not in isolation: see the issue notes)
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(30)
        # `ray start` (not --block) leaves the head running after serve: stop the processes of this head only
        for p in psutil.process_iter(["cmdline"]):
            if any(f"ray-caviar-{gcs}" in part or f":{gcs}" in part for part in (p.info["cmdline"] or [])):
                p.kill()
        shutil.rmtree(f"/tmp/ray-caviar-{gcs}", ignore_errors=True)
