"""Serving the app with uvicorn, with a graceful SIGTERM; in one process, or in several on one socket."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

if TYPE_CHECKING:
    from service.settings import Settings

STARTUP_GRACE_S = 10.0  # a worker that dies this soon after its start is not restarted: the server stops


def _draining_server(app: FastAPI, config: Any, drain_s: float) -> Any:
    """A uvicorn server whose first SIGTERM drains: /readyz turns 503 (draining) at once, the server
    stops accepting ``drain_s`` later, in-flight requests get up to 20 s, then the process exits 0.
    Running studies are Ray jobs: they keep running. A second signal (or SIGINT) exits at once; but a
    SIGTERM within a second of the first is the same stop delivered twice (to the process group, and
    passed on by a ``--workers`` supervisor) and is ignored."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        drain_began = 0.0

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            draining = getattr(app.state, "draining", False)
            if draining and sig == signal.SIGTERM and time.monotonic() - self.drain_began < 1.0:
                return
            if draining or sig == signal.SIGINT:
                self.should_exit = True
                self.force_exit = self.force_exit or draining
                return
            app.state.draining, self.drain_began = True, time.monotonic()
            print(f"caviar: {signal.Signals(sig).name}: draining for {drain_s:g} s, then stopping", file=sys.stderr, flush=True)
            threading.Timer(drain_s, lambda: setattr(self, "should_exit", True)).start()

    return DrainingServer(config)


def _config(app: FastAPI, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=20)


def run_server(app: FastAPI, host: str, port: int, drain_s: float) -> None:
    """Serve ``app`` in this process (see ``_draining_server`` for SIGTERM)."""
    freeze_startup_objects()
    _draining_server(app, _config(app, host, port), drain_s).run()


def run_workers(settings: Settings, host: str, port: int, workers: int) -> None:
    """Serve the API in ``workers`` processes that share one listening socket (one accept queue: the
    split across them follows who is free to accept), each with its own app over the same settings
    and store. One of them runs the dispatcher (service.api.dispatch: a lease in the store). This
    process supervises: it passes SIGTERM and SIGINT on (each worker drains as a single server does)
    and starts a worker again when one dies (after 1, 2, 4 ... up to 30 s when the ones before it
    died within STARTUP_GRACE_S of their start); if one of the first workers dies that soon (the app
    cannot start), all stop and this exits 1."""
    multiprocessing.allow_connection_pickling()  # the socket goes to each worker
    sock = _config(FastAPI(), host, port).bind_socket()
    spawn = multiprocessing.get_context("spawn")
    stopping: list[int] = []
    procs: list[list[Any]] = []  # [process, one of the first, started at]
    metrics_dir = tempfile.mkdtemp(prefix="caviar-metrics-")  # the workers' HTTP series (service.api.metrics)

    def start(slot: int, first: bool) -> None:
        proc = spawn.Process(target=_worker, args=(settings, sock, settings.drain_s, metrics_dir, os.getpid()), name="caviar-api-worker")
        entry = [proc, first, time.monotonic()]
        if slot == len(procs):
            procs.append(entry)
        else:
            procs[slot] = entry  # in the list before it starts: a stop from here on reaches it (below, or forward)
        try:
            proc.start()
        except (OSError, ValueError):  # a stop began and closed the socket meanwhile: this one is not needed
            if not stopping:
                raise
            return
        if stopping and proc.pid is not None:  # a stop began while it started
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, stopping[-1])

    def forward(sig: int, frame: FrameType | None) -> None:
        if not stopping:
            sock.close()  # the workers hold their own copies: when they close theirs, new connections are refused, not queued
        stopping.append(sig)
        for proc, _, _ in procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT):  # before the first worker starts: no stop goes unpassed
        signal.signal(sig, forward)
    for slot in range(workers):
        start(slot, True)
    print(f"caviar: {workers} API worker processes: {' '.join(str(p.pid) for p, _, _ in procs)}", file=sys.stderr, flush=True)
    code, quick_deaths = 0, 0
    again_at: dict[int, float] = {}  # slot -> when its worker is started again
    while True:
        alive = [proc for proc, _, _ in procs if proc.is_alive()]
        if stopping and not alive:
            break
        if alive:
            multiprocessing.connection.wait([proc.sentinel for proc in alive], timeout=1.0)
        else:
            time.sleep(0.5)
        if stopping:
            continue
        for slot, (proc, first, born) in enumerate(procs):
            if proc.is_alive():
                continue
            now = time.monotonic()
            if slot not in again_at:
                if now - born < STARTUP_GRACE_S and first:
                    print(f"caviar: API worker {proc.pid} exited with code {proc.exitcode} at start-up: stopping", file=sys.stderr, flush=True)
                    code = 1
                    forward(signal.SIGTERM, None)
                    break
                quick_deaths = quick_deaths + 1 if now - born < STARTUP_GRACE_S else 0  # one that keeps failing: back off
                delay = min(30.0, 2.0 ** (quick_deaths - 1)) if quick_deaths else 0.0
                print(f"caviar: API worker {proc.pid} exited with code {proc.exitcode}: starting another"
                      + (f" in {delay:g} s" if delay else ""), file=sys.stderr, flush=True)
                again_at[slot] = now + delay
            if now >= again_at[slot]:
                del again_at[slot]
                start(slot, False)
    if not stopping:
        sock.close()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    if code:
        raise SystemExit(code)


def _worker(settings: Settings, sock: socket.socket, drain_s: float, metrics_dir: str, supervisor: int) -> None:
    """One API process of ``run_workers``."""
    if sys.platform == "linux":  # end with the supervisor, even if it is killed
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != supervisor:  # it died before the line above: nobody would stop this one
        return
    # /metrics sums every worker's HTTP series: prometheus_client's multiprocess mode, which it reads
    # from the environment as it is imported (below, with the app): this process's own environment
    assert "prometheus_client" not in sys.modules, "prometheus_client was imported before its multiprocess directory was set"
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
    from service.api.app import create_app

    app = create_app(settings, run_migrations=False)
    freeze_startup_objects()
    _draining_server(app, _config(app, "", 0), drain_s).run(sockets=[sock])


def freeze_startup_objects() -> None:
    """Move what the process holds at start-up (modules, classes, the app: about 150,000 objects)
    out of the garbage collector's sight. A request allocates thousands of objects (ORM rows,
    pydantic models), so full collections come every few requests, and each walked all of them:
    a page of 50 studies took 5.7 ms with them frozen against 7.6 without (docs/benchmarks.md §4)."""
    gc.collect()
    gc.freeze()
