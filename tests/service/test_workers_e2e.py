"""`caviar serve --workers 2` on the session's Ray head: two API processes on one port, one of them
dispatching (the store's lease). Each study runs as one Ray job; /metrics counts every worker's
requests whichever answers; when the dispatching worker is killed, the supervisor starts another and
the surviving worker takes the dispatcher over; SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.local import LocalHead, LocalServer, wait_until
from service.store import DISPATCHER, Store

QUICK = {"name": "workers", "trainable": "busy_work", "dataset": {"name": "digits"},
         "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
         "fixed": {"epochs": 2, "seconds_per_epoch": 0.01}, "scheduler": {"type": "none"},
         "sampler": {"type": "random", "seed": 1}, "budget": {"num_trials": 2, "max_concurrent_trials": 2}}


def workers(pid: int) -> set[int]:
    """The API worker processes of the supervisor ``pid`` (not multiprocessing's resource tracker)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.add(int(child))
            except FileNotFoundError:
                pass
    return found


def served(url: str) -> float:
    """GET /v1/trainables answered with 2xx, as /metrics counts them (each request and each scrape on
    a connection of its own, so the kernel hands them to either worker)."""
    text = httpx.get(f"{url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "http_requests_total" and s.labels.get("handler") == "/v1/trainables" and s.labels.get("status") == "2xx")


def leader(store: Store) -> int | None:
    held = store.leases.holder(DISPATCHER)
    return int(held[0].split(":")[-3]) if held else None


def run_study(server: LocalServer, head: LocalHead) -> dict[str, Any]:
    with server.client() as client:  # a new connection: the worker that served the last may be gone
        sid = client.submit(QUICK)["id"]
        study = wait_until(lambda: (s := client.study(sid))["status"] in ("completed", "failed", "cancelled") and s, 120,
                           f"study {sid} to finish", interval=0.25)
    assert study["status"] == "completed", study["error"]
    jobs = [j for j in head.jobs()._client().list_jobs() if (j.metadata or {}).get("caviar_study_id") == sid]
    assert [j.submission_id for j in jobs] == [study["ray_job_id"]]  # one Ray job, whichever worker dispatched
    return study


@pytest.mark.ray
def test_two_api_workers_dispatch_each_study_once_and_survive_the_loss_of_the_dispatching_one(ray_head: LocalHead, tmp_path: Path) -> None:
    server = LocalServer(tmp_path, ray_head, args=("--workers", "2"),
                         env={"CAVIAR_DISPATCH_LEASE_S": "3", "CAVIAR_WARM_DRIVER": "false", "CAVIAR_DRAIN_S": "3"})
    server.start()
    now: set[int] = set()
    try:
        assert server.proc is not None
        store = Store(f"sqlite:///{tmp_path / 'caviar.db'}")
        first = wait_until(lambda: len(w := workers(server.proc.pid)) == 2 and w, 30, "two API workers")  # type: ignore[union-attr]
        lead = wait_until(lambda: leader(store), 30, "a worker to hold the dispatcher lease")
        assert lead in first
        run_study(server, ray_head)
        for _ in range(40):
            assert httpx.get(f"{server.url}/v1/trainables").status_code == 200
        assert [served(server.url) for _ in range(8)] == [40.0] * 8  # every scrape sums both workers' counts

        os.kill(lead, signal.SIGKILL)  # the dispatching worker dies
        now = wait_until(lambda: len(w := workers(server.proc.pid)) == 2 and lead not in w and w, 30,  # type: ignore[union-attr]
                         "the supervisor to start another worker")
        assert len(now & first) == 1  # the survivor, and one new
        new_lead = wait_until(lambda: (p := leader(store)) not in (None, lead) and p, 15, "another worker to take the dispatcher over")
        assert new_lead in now
        assert [served(server.url) for _ in range(8)] == [40.0] * 8  # the dead worker's counts are kept
        run_study(server, ray_head)
        assert f"API worker {lead} exited with code -9: starting another" in server.log_path.read_text()
    finally:
        ready: list[int] = []
        if server.proc is not None and server.proc.poll() is None:  # SIGTERM to the whole group, as systemd sends it
            os.killpg(server.proc.pid, signal.SIGTERM)
            try:  # the workers drain for CAVIAR_DRAIN_S: they still answer, /readyz with 503
                ready = [httpx.get(f"{server.url}/readyz", timeout=5).status_code for _ in range(4)]
                server.proc.wait(30)
            finally:
                server.stop()
    assert server.proc is not None and server.proc.returncode == 0
    # the supervisor's copy of the same SIGTERM did not cut the drain short (a second signal would)
    assert ready == [503] * 4 and server.log_path.read_text().count("SIGTERM: draining") >= 2
    for pid in now:
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
