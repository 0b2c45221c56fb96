"""One study on a cluster of several hosts, as docker/compose.yaml lays it out, through the real stack.

Each host is a Linux network namespace with its own IP on a bridge (``tests.cluster.hosts``), running
one Ray node started with its container's script: ``docker/start-head.sh`` (0 CPUs: the GCS, the
dashboard, the Jobs API and each study's driver) and ``docker/start-worker.sh`` on two workers (2
CPUs each), all with one Ray token. The API (``caviar serve``) and PostgreSQL run on this machine's
own network, as compose's ``api`` and ``postgres`` services do on theirs: the API reaches the head's
dashboard at its IP, the hosts reach PostgreSQL at the bridge's address (through a forwarder: it
listens on 127.0.0.1 only), in a database of the test's own. The data directory is shared by all
hosts, as the compose volume is: Tune's checkpoints are there for whichever node runs a trial next.
Where namespaces cannot be made (not root) the test says so and runs its nodes on loopback
addresses instead; in CI that is a failure.

What must hold, read over the API's HTTP (each trial's ``node``, ``retries`` and epoch history):

1. a study with 4 concurrent trials runs trials on both workers;
2. kill -9 of every process of one worker mid-study: the study still completes with exactly
   ``num_trials`` trials; each trial that was on the lost worker is retried on the other one from
   its last checkpoint (also in Tune's own log of results in the shared data dir: its first epoch on
   the new node follows its last on the old one, or repeats it when the worker died between Tune
   logging that epoch and registering its checkpoint); no trial and no epoch is lost or duplicated in the
   store; the API answers /healthz all along;
3. a worker that joins mid-study, while trials wait for CPUs, gets trials: the cluster grows with
   nothing restarted.

CAVIAR_TEST_HOSTS=loopback runs the loopback variant where namespaces could be made;
CAVIAR_TEST_KEEP_RAY_LOGS=1 keeps the nodes' Ray logs in tmp_path when the test passes (it always
does when it fails).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from service.client import FINISHED
from service.local import LocalServer, wait_until
from tests.cluster.hosts import Host, Hosts, LoopbackHosts, NetnsHosts, TcpForwarder, alive_nodes, netns_unavailable
from tests.conftest import fresh_postgres_database, in_ci, require

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# 10 s trials (10 epochs of 1 s) of ``sleep_work`` (tests/cluster/plugins: busy_work's epochs and
# checkpoints, sleeping instead of spinning: 4 spinning trials on a 2-core machine starve the Ray
# processes the test watches). Two workers hold the 4 concurrent trials (1 CPU each) exactly, 2 on
# each; after one is lost the other runs 2 at a time while 2 more wait for CPUs.
NUM_TRIALS, CONCURRENT, EPOCHS, SECONDS_PER_EPOCH = 8, 4, 10, 1.0
WORKER_CPUS = 2


PLUGINS = Path(__file__).parent / "plugins"  # sleep_work, through its entry point (its dist-info)
PYTHONPATH = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH")) if p)


def make_hosts(log_dir: Path, token: str) -> Hosts:
    """Network namespaces; loopback addresses where they cannot be made (an error in CI) or with
    CAVIAR_TEST_HOSTS=loopback; a skip where neither works (loopback beyond 127.0.0.1: Linux only)."""
    if os.environ.get("CAVIAR_TEST_HOSTS") != "loopback":
        why = netns_unavailable()
        if why is None:
            return NetnsHosts(log_dir, token)
        if in_ci():
            pytest.fail(f"CI=true but {why}: the multi-host test needs network namespaces")
        print(f"\n{why}: the hosts are loopback addresses instead of network namespaces", file=sys.stderr)
    hosts = LoopbackHosts(log_dir, token)
    require(hosts.usable(), f"no loopback addresses beyond 127.0.0.1 here ({hosts.prefix}2 cannot be bound): no hosts for the multi-host test")
    return hosts


class HealthWatch:
    """GET /healthz every 0.2 s from a thread, until stopped: every request must be answered 200 (within
    10 s: the machine is busy starting Ray nodes, a slow answer is not an API that is down)."""

    def __init__(self, url: str) -> None:
        self.url, self.ok = url, 0
        self.failures: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="healthz", daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stopped.wait(0.2):
                try:
                    status = http.get("/healthz").status_code
                except httpx.HTTPError as exc:
                    self.failures.append(f"{time.strftime('%H:%M:%S')}: {exc!r}")
                    continue
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{time.strftime('%H:%M:%S')}: HTTP {status}")

    @contextmanager
    def running(self) -> Iterator[HealthWatch]:
        self.thread.start()
        try:
            yield self
        finally:
            self.stopped.set()
            self.thread.join(10)


def via(url: str, host: str, port: int) -> str:
    """``url`` (postgresql://user@127.0.0.1:5432/db) with its host and port replaced."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}:{port}" if user else f"{host}:{port}"))


def tune_results(data: Path, sid: str) -> dict[str, list[tuple[int, str]]]:
    """(epoch, node IP) of every result each trial reported to Tune, in order, from Tune's own log in
    the shared data dir (result.json, appended to across retries)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for f in (data / "ray_results" / sid).glob("*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = [(int(r["epoch"]), str(r["node_ip"])) for r in rows]
    return out


def test_trials_spread_over_hosts_survive_a_lost_worker_and_use_a_joining_one(tmp_path: Path) -> None:
    data = tmp_path / "data"  # the volume every host mounts
    (data / "datasets").mkdir(parents=True)
    token = secrets.token_hex(16)  # the cluster's Ray token (compose: the ray_token secret)
    with ExitStack() as stack:
        admin_url = stack.enter_context(fresh_postgres_database())
        hosts = make_hosts(tmp_path / "hosts", token)
        passed = False
        # the nodes' Ray logs stay in tmp_path when it fails (or with CAVIAR_TEST_KEEP_RAY_LOGS=1)
        stack.callback(lambda: hosts.close(keep_logs=not passed or bool(os.environ.get("CAVIAR_TEST_KEEP_RAY_LOGS"))))
        # PostgreSQL as a host of the network sees it: the bridge's side of this machine
        pg = urlsplit(admin_url)
        if hosts.gateway != "127.0.0.1":
            forwarder = TcpForwarder(hosts.gateway, (pg.hostname or "127.0.0.1", pg.port or 5432)).start()
            stack.callback(forwarder.close)
            database_url = via(admin_url, hosts.gateway, forwarder.port)
        else:
            database_url = admin_url
        node_env = {"CAVIAR_DATA_DIR": str(data), "PYTHONPATH": PYTHONPATH}

        # the cluster: a head that runs no trials and two workers
        head, w1, w2 = hosts.add("head"), hosts.add("w1"), hosts.add("w2")
        hosts.start_head(head, node_env)

        def nodes_up(*workers: Host) -> bool:
            for h in (head, *workers):
                if (why := hosts.exited(h)) is not None:
                    raise RuntimeError(why)
            alive = alive_nodes(head, token)
            return alive.get(head.ip, {}).get("CPU", 0.0) == 0 and head.ip in alive and all(
                alive.get(w.ip, {}).get("CPU") == WORKER_CPUS for w in workers)

        # the workers start once the head is healthy (compose: depends_on ray-head: service_healthy)
        started = time.monotonic()
        wait_until(nodes_up, 180, "the Ray head", interval=0.5)
        for w in (w1, w2):
            hosts.start_worker(w, head, WORKER_CPUS, node_env)
        wait_until(lambda: nodes_up(w1, w2), 180, "both workers to join", interval=0.5)
        print(f"\ncluster up in {time.monotonic() - started:.1f} s: head {head.ip}, workers {w1.ip} {w2.ip}", file=sys.stderr)

        # the API on this machine's network, against the head's dashboard (compose: http://ray-head:8265)
        server = LocalServer(data, None, database_url=database_url,
                             env={"RAY_ADDRESS": head.dashboard, "RAY_AUTH_TOKEN": token, "RAY_AUTH_MODE": "token", "PYTHONPATH": PYTHONPATH})
        stack.callback(server.stop)
        server.start()
        client = server.client()
        stack.callback(client.close)
        health = stack.enter_context(HealthWatch(server.url).running())

        hold = data / "hold"  # while it exists, trials do not get past their current epoch (sleep_work)
        sid = client.submit({
            "name": "multihost", "trainable": "sleep_work", "dataset": {"name": "digits"},
            "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0}, "y": {"type": "float", "low": 0.0, "high": 1.0}},
            "fixed": {"epochs": EPOCHS, "seconds_per_epoch": SECONDS_PER_EPOCH, "hold": str(hold)},
            "sampler": {"type": "random", "seed": 7}, "scheduler": {"type": "none"},
            "budget": {"num_trials": NUM_TRIALS, "max_concurrent_trials": CONCURRENT, "max_failures": 3},
        })["id"]

        def trials() -> list[dict[str, Any]]:
            return client.trials(sid)

        def running_on(host: Host, now: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [t for t in now if t["state"] == "running" and t["node"] == host.ip]  # node: from the trial's first result

        def first_wave() -> list[dict[str, Any]]:
            now = trials()
            on_w1, on_w2 = running_on(w1, now), running_on(w2, now)
            ready = len(on_w1) == len(on_w2) == WORKER_CPUS and all(t["epochs"] >= 2 for t in on_w1)
            return on_w1 if ready else []

        # 1. the 4 concurrent trials run on both workers: 2 CPUs each, none on the head; those on w1
        # have checkpointed an epoch or two
        on_w1 = wait_until(first_wave, 180, "two trials running on each worker", interval=0.5)
        assert {t["node"] for t in trials()} == {w1.ip, w2.ip}

        # 2. w1 crashes: kill -9 of every process on it (its raylet, its trials' workers, Ray's agents)
        lost = {t["trial_id"] for t in on_w1}
        assert hosts.kill(w1) > 0
        print(f"killed w1 at epochs {sorted(t['epochs'] for t in on_w1)}", file=sys.stderr)
        killed_at = time.monotonic()
        # Ray notices the node is gone; Tune retries its trials on w2 from their checkpoints in the shared data dir
        wait_until(lambda: w1.ip not in alive_nodes(head, token), 120, "Ray to mark w1 dead", interval=0.5)
        print(f"w1 dead for Ray after {time.monotonic() - killed_at:.1f} s", file=sys.stderr)

        def moved() -> bool:
            now = {t["trial_id"]: t for t in trials()}
            return all(now[i]["retries"] >= 1 and now[i]["node"] == w2.ip for i in lost)

        wait_until(moved, 180, "the lost trials to be retried on w2", interval=0.5)
        print(f"lost trials running on w2 after {time.monotonic() - killed_at:.1f} s", file=sys.stderr)

        # 3. a third worker joins while trials wait for CPUs. Tune hands a CPU that w2 frees to a
        # waiting trial at once (it reuses the trial's process), before a new worker has started
        # one: w2 is held at its current epochs until a trial runs on w3, so the test does not race
        # w3's start against the end of w2's trials
        hold.touch()
        assert len(trials()) < NUM_TRIALS, "every trial had started before the new worker could join"
        w3 = hosts.add("w3")
        hosts.start_worker(w3, head, WORKER_CPUS, node_env)
        joining = time.monotonic()
        wait_until(lambda: nodes_up(w2, w3), 180, "w3 to join", interval=0.5)
        print(f"w3 joined in {time.monotonic() - joining:.1f} s; {NUM_TRIALS - len(trials())} trials still to start", file=sys.stderr)
        wait_until(lambda: any(t["node"] == w3.ip for t in trials()), 180, "a trial on w3", interval=0.5)
        print(f"a trial on w3 {time.monotonic() - joining:.1f} s after its start", file=sys.stderr)
        hold.unlink()

        def finished() -> dict[str, Any]:
            study = client.study(sid)
            return study if study["status"] in FINISHED else {}

        s = wait_until(finished, 300, "the study to finish", interval=1)
        print(f"study finished {time.monotonic() - started:.1f} s after the cluster started", file=sys.stderr)
        health.stopped.set()

        # the study: exactly num_trials trials, each measured once per epoch, the driver never resumed
        assert s["status"] == "completed", s
        assert s["resumes"] == 0
        final = trials()
        assert len(final) == NUM_TRIALS and len({t["trial_id"] for t in final}) == NUM_TRIALS
        assert all(t["state"] == "completed" and t["epochs"] == EPOCHS for t in final), final
        for t in final:
            history = client.trial(sid, t["trial_id"])["history"]
            assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1)), (t["trial_id"], history)
        by_id = {t["trial_id"]: t for t in final}
        # the lost trials: retried, and finished on w2 (no trial ever ran on the head)
        for i in lost:
            assert by_id[i]["retries"] >= 1 and by_id[i]["node"] == w2.ip, by_id[i]
        assert all(t["retries"] == 0 for t in final if t["trial_id"] not in lost), final  # no other trial failed
        assert {t["node"] for t in final} <= {w1.ip, w2.ip, w3.ip}
        assert any(t["node"] == w3.ip for t in final)

        # from their last checkpoint, in the shared data dir: in Tune's own log of results, each lost
        # trial's first epoch on w2 follows its last one on w1 (nothing skipped; at most one re-run, below)
        results = tune_results(data, sid)
        assert set(results) == set(by_id)
        # Tune logs a result before it registers the result's checkpoint (a separate ``save`` call
        # to the trial's actor, ray.tune's function_trainable): a worker lost between the two makes
        # Tune resume from the checkpoint before, and that one epoch runs twice in Tune's log, never
        # more, never skipped. The store above has each epoch once either way.
        for i, rows in results.items():
            epochs = [e for e, _ in rows]
            if i not in lost:
                assert epochs == list(range(1, EPOCHS + 1)), (i, rows)
                continue
            nodes = [n for _, n in rows]
            first_on_w2 = nodes.index(w2.ip)
            assert set(nodes[:first_on_w2]) == {w1.ip} and set(nodes[first_on_w2:]) == {w2.ip}, (i, rows)
            on_w1, on_w2 = epochs[:first_on_w2], epochs[first_on_w2:]
            assert on_w1 == list(range(1, len(on_w1) + 1)) and len(on_w1) >= 2, (i, rows)
            assert on_w2[0] in (on_w1[-1], on_w1[-1] + 1), (i, rows)  # resumed from its last checkpoint (or the one before)
            assert on_w2 == list(range(on_w2[0], EPOCHS + 1)), (i, rows)

        if hosts.gateway != "127.0.0.1":
            assert forwarder.connections > 0  # the store was reached from the hosts' network
        assert not health.failures, f"/healthz failed at {health.failures}"
        assert health.ok > 10
        passed = True
