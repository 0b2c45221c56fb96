"""Control plane at scale: many studies at once on a simulated big cluster, trainables that do
almost no work, and what the store, the drivers, Ray and the API do with the results.

Two phases, each on a fresh database (SQLite in a temp dir, or with ``--database-url`` a fresh
PostgreSQL database ``caviar_bench_<random>``, dropped after):

  ray   The real path. A Ray head (service.local.LocalHead) that declares ``--num-cpus`` virtual CPUs
        (256 by default: 2 x 128) on this machine, `caviar serve` on it, and ``--studies`` studies
        submitted at once through the REST API (service.client.Client), each dispatched as one Ray job
        whose driver (`python -m service.runner ID`) runs a Tuner: ``--trials`` trials of ``zero_work``
        x ``--epochs`` epochs, ``--concurrent`` at a time, no early stopping, 1 (virtual) CPU a trial.
        ``zero_work`` is declared here and installed for the run as a plug-in (a dist-info with a
        ``caviar.trainables`` entry point on PYTHONPATH, as tests/plugins does): each epoch it
        sleeps ``--epoch-s`` (0: none) and reports val_accuracy and ``t_report`` = time.time() in
        the trial process, which the driver's StoreCallback stores with the epoch (with its own
        ``reported_at``): so every result carries when the trial reported it and when its driver
        heard of it, on one clock. Each trial is a Ray actor process and each study a driver process
        plus a job-supervisor actor: this is what limits how far the real path goes on 2 cores / 24 GiB.
  sim   The control plane beyond that, simulated: `caviar serve` without Ray, and ``--sim-drivers``
        processes that each play one study's driver: they submit a study over REST, mark it running
        as service.runner does, and feed the driver's own StoreCallback (service.runner.callbacks)
        as Tune does, from one thread (Tune calls its callbacks from its single event loop):
        on_trial_start, on_trial_result per epoch, on_trial_complete, for ``--sim-trials`` concurrent
        trials each, paced so that all drivers together offer each rate of ``--sim-rates`` results/s
        for ``--sim-step-s``. 20 drivers x 50 trials = 1,000 concurrent trials; at 300 results/s each
        trial reports an epoch every 3.3 s.

Meanwhile, in both phases:
  reader   a separate process, open loop at ``--read-rate`` requests/s over HTTP: GET
           /v1/studies/{id} and .../trials (cached), .../trials/{trial} with its history, .../best and
           the listing (uncached); and a poller that reads each study's .../trials round-robin at
           ``--poll-rate``/s and records, for each trial epoch it sees first, the lag from the trial's
           report (``t_report``) to that moment: this includes the read cache's TTL
           (CAVIAR_READ_CACHE_S, 0.5 s) and the poller's own period (studies / poll rate).
  monitor  every ``--sample-s`` (psutil): CPU (cores) and RSS per process class (drivers, trial
           actors, Ray's job supervisors, Ray's core processes, the API, PostgreSQL, the reader,
           this process, anything else on the machine), machine CPU and memory, results stored
           (rows of caviar_metrics) and, on PostgreSQL, commits / rows inserted / rows updated
           (pg_stat_database) of the run's database.
Afterwards: every result made it (ray: every trial completed with all its epochs, each stored once;
sim: every epoch a driver wrote is stored exactly once), and what each of the numbers above was.

Figures: results ingested/s, report -> stored and report -> readable-through-the-API lag (p50/p99),
RSS per driver and per trial actor, store writes/s, API p99 under the load, CPU per class (which
saturates first), and per-result CPU cost per class (the per-unit costs docs/scaling.md builds on).

--smoke (CI, about half a minute): sim only, 4 drivers x 25 trials at 100 results/s for 10 s (with
``--phases ray,sim`` also ray: 2 studies x 4 trials x 5 epochs, 2 at a time, whose checks the
end-to-end tests make on Ray already: every trial completed with every epoch stored once, a plug-in
trainable, no API error). Asserts: no lost result; the simulated drivers sustained at least half
the offered rate (50/s: safe on a loaded 2-core box); no API error.

    python -m bench.control_plane --database-url postgresql://postgres@127.0.0.1:5432/postgres   # full
    python -m bench.control_plane --smoke                                                          # CI (SQLite)
    python -m bench.control_plane --phases sim --database-url ... --sim-rates 300,600,1200,2400    # find the ceiling
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trainables.datasets import DatasetSpec, DigitsSpec
from trainables.registry import TrainableSpec

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVE, MODE = "val_accuracy", "max"
METRICS = ("val_accuracy", "t_report")
GOAL_RESULTS_PER_S = 300.0
GOAL_API_P99_MS = 100.0


# -- the trainable: almost no work per epoch -----------------------------------------------------------


class ZeroWorkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: DatasetSpec = Field(default_factory=lambda: DigitsSpec(name="digits"), description="Unused.")
    epochs: int = Field(20, ge=1, le=1000)
    epoch_s: float = Field(0.0, ge=0.0, le=3600.0, description="Seconds slept per epoch (no CPU): a GPU epoch stand-in.")
    x: float = Field(0.5, ge=0.0, le=1.0)
    y: float = Field(0.5, ge=0.0, le=1.0)


def zero_work(config: dict[str, Any]) -> None:
    """Reports ``epochs`` epochs at once (or one per ``epoch_s`` of sleep) with the time of each report."""
    from trainables.report import get_reporter

    cfg = ZeroWorkConfig.model_validate(config)
    reporter = get_reporter()
    score = 1.0 - (cfg.x - 0.3) ** 2 - (cfg.y - 0.7) ** 2
    for epoch in range(1, cfg.epochs + 1):
        if cfg.epoch_s:
            time.sleep(cfg.epoch_s)
        reporter.report({"epoch": epoch, "val_accuracy": score * (1.0 - 0.5 ** epoch), "t_report": time.time()})


ZERO_WORK = TrainableSpec("zero_work", "bench.control_plane:zero_work", ZeroWorkConfig, METRICS,
                          "bench.control_plane: no work per epoch (or a sleep), reports the time of each report.")


def install_plugin(work: Path) -> None:
    """Make ``zero_work`` a plug-in trainable for every process started after this: a dist-info with
    its entry point, and the repository root (for ``bench``), on PYTHONPATH (the Ray head, its jobs
    and trial processes, and `caviar serve` inherit it)."""
    site = work / "plugin"
    dist = site / "caviar_bench_zero_work-0.1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: caviar-bench-zero-work\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[caviar.trainables]\nzero_work = bench.control_plane:ZERO_WORK\n")
    parts = [str(site), str(ROOT), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    sys.path.insert(0, str(site))


def definition(index: int, trials: int, epochs: int, concurrent: int, sampler: str, epoch_s: float = 0.0) -> dict[str, Any]:
    return {
        "name": f"control-plane-{index}", "trainable": "zero_work", "dataset": {"name": "digits"},
        "search_space": {"x": {"type": "float", "low": 0, "high": 1}, "y": {"type": "float", "low": 0, "high": 1}},
        "fixed": {"epochs": epochs, "epoch_s": epoch_s},
        "objective": {"metric": OBJECTIVE, "mode": MODE},
        "sampler": {"type": sampler, "seed": index}, "scheduler": {"type": "none"},
        "budget": {"num_trials": trials, "max_concurrent_trials": concurrent, "max_failures": 0},
        "resources_per_trial": {"cpu": 1, "gpu": 0},
    }


# -- the monitor: CPU and memory per process class, and the store's counters ---------------------------


def classify(p: Any, me: int, reader: int | None, ours: set[int] | None = None) -> str:
    """The class of a process, from its command line (psutil.Process with cached info). With ``ours``
    (the pids this benchmark started, and their descendants), any other process is "other" (someone
    else's work on the machine), PostgreSQL's server processes excepted (a shared server)."""
    try:
        cmd = p.info.get("cmdline") or []
        name = p.info.get("name") or ""
        ppid = p.info.get("ppid")
    except Exception:
        return "other"
    line = " ".join(cmd)
    if name.startswith("postgres") or line.startswith("postgres"):
        return "postgresql"
    if ours is not None and p.pid not in ours:
        return "other"
    if p.pid == me:
        return "bench"
    if reader is not None and p.pid == reader:
        return "reader"
    if "-m service.runner" in line:
        return "driver" if "python" in (cmd[0] if cmd else "") else "driver shell"
    if "spawn_main" in line and ppid == me:
        return "sim driver"
    if len(cmd) > 1 and cmd[0].endswith("caviar") and "serve" in cmd:
        return "api"
    if len(cmd) > 2 and cmd[1].endswith("/caviar") and "serve" in cmd:
        return "api"
    if name.startswith("postgres") or line.startswith("postgres"):
        return "postgresql"
    if line.startswith("ray::"):
        if "ImplicitFunc" in line or "_Inner" in line or "Trainable" in line:
            return "trial actor"
        if "JobSupervisor" in line:
            return "job supervisor"
        if "IDLE" in line:
            return "ray idle worker"
        return "ray other worker"
    if any(k in line for k in ("gcs_server", "raylet", "dashboard", "log_monitor", "ray/_private", "runtime_env", "ray/autoscaler",
                               "ray start")):
        return "ray core"
    return "other"


@dataclass
class Sample:
    t: float
    cpu: dict[str, float]  # cores busy since the previous sample, per class
    rss_mb: dict[str, float]  # summed RSS per class
    count: dict[str, int]  # processes per class
    machine_busy: float  # cores
    mem_used_mb: float
    stored: int | None  # rows of caviar_metrics
    pg: dict[str, int] | None  # xact_commit, tup_inserted, tup_updated of the run's database
    other: dict[str, float]  # cores of the processes classed "other", by name (someone else's work on the machine)


class Monitor(threading.Thread):
    """Samples every ``interval`` seconds until stopped; keeps per-process peak RSS per class."""

    def __init__(self, interval: float, database_url: str, reader_pid: Any = None, roots: Any = None) -> None:
        super().__init__(daemon=True)
        import psutil
        from sqlalchemy import create_engine

        from service.store import sqlalchemy_url

        self.psutil, self.interval = psutil, interval
        self.engine = create_engine(sqlalchemy_url(database_url), pool_size=1, max_overflow=0)
        self.postgres = database_url.startswith("postgresql")
        self.reader_pid = reader_pid  # a callable -> pid or None
        self.roots = roots  # a callable -> pids whose process trees are this benchmark's (besides this process)
        self.samples: list[Sample] = []
        self.peak_rss: dict[str, dict[int, float]] = defaultdict(dict)  # class -> pid -> peak RSS MB
        self.examples: dict[str, set[str]] = defaultdict(set)  # class -> a few command lines (what was counted where)
        self.stop_event = threading.Event()
        self._cpu: dict[int, float] = {}
        self._procs: dict[int, Any] = {}

    def probe(self) -> tuple[int | None, dict[str, int] | None]:
        from sqlalchemy import text

        try:
            with self.engine.connect() as c:
                stored = int(c.execute(text("SELECT count(*) FROM caviar_metrics")).scalar() or 0)
                pg = None
                if self.postgres:
                    row = c.execute(text("SELECT xact_commit, tup_inserted, tup_updated, tup_fetched FROM pg_stat_database "
                                         "WHERE datname = current_database()")).one()
                    pg = {"xact_commit": int(row[0]), "tup_inserted": int(row[1]), "tup_updated": int(row[2]), "tup_fetched": int(row[3])}
                c.rollback()
            return stored, pg
        except Exception:
            return None, None

    def sample(self, last_t: float) -> Sample:
        ps = self.psutil
        now = time.time()
        me = os.getpid()
        reader = self.reader_pid() if self.reader_pid else None
        cpu: dict[str, float] = defaultdict(float)
        rss: dict[str, float] = defaultdict(float)
        count: Counter[str] = Counter()
        other: dict[str, float] = defaultdict(float)
        seen = set()
        listed = list(ps.process_iter(["pid", "name", "cmdline", "ppid"]))
        children: dict[int, list[int]] = defaultdict(list)
        for p in listed:
            children[p.info.get("ppid") or 0].append(p.pid)
        ours: set[int] = set()
        todo = [me, *(self.roots() if self.roots else [])]
        while todo:
            pid = todo.pop()
            if pid and pid not in ours:
                ours.add(pid)
                todo.extend(children.get(pid, []))
        for p in listed:
            try:
                if p.pid not in self._procs:
                    self._procs[p.pid] = p
                p0 = self._procs[p.pid]
                p0.info = p.info
                cls = classify(p0, me, reader, ours)
                with p0.oneshot():
                    times = p0.cpu_times()
                    mem = p0.memory_info().rss / 2**20
                    created = p0.create_time()
            except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess):
                continue
            seen.add(p.pid)
            total = times.user + times.system
            before = self._cpu.get(p.pid, 0.0 if created >= last_t else total)
            self._cpu[p.pid] = total
            cpu[cls] += max(0.0, total - before)
            cmd = " ".join(p0.info.get("cmdline") or [p0.info.get("name") or "?"])[:100]
            if cls == "other":
                other[cmd[:60]] += max(0.0, total - before)
            if len(self.examples[cls]) < 6:
                self.examples[cls].add(cmd)
            rss[cls] += mem
            count[cls] += 1
            self.peak_rss[cls][p.pid] = max(self.peak_rss[cls].get(p.pid, 0.0), mem)
        for pid in list(self._procs):
            if pid not in seen:
                self._procs.pop(pid, None)
                self._cpu.pop(pid, None)
        dt = max(1e-3, now - last_t)
        ct = ps.cpu_times()
        busy = ct.user + ct.system + getattr(ct, "nice", 0) + getattr(ct, "irq", 0) + getattr(ct, "softirq", 0) + getattr(ct, "steal", 0)
        machine = (busy - self._busy) / dt if hasattr(self, "_busy") else float("nan")
        self._busy = busy
        stored, pg = self.probe()
        return Sample(now, {k: v / dt for k, v in cpu.items()}, dict(rss), dict(count), machine, ps.virtual_memory().used / 2**20, stored, pg,
                      {k: v / dt for k, v in other.items() if v > 0})

    def run(self) -> None:
        last = time.time()
        self.sample(last)  # baseline
        last = time.time()
        while not self.stop_event.wait(self.interval):
            s = self.sample(last)
            last = s.t
            self.samples.append(s)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        self.engine.dispose()

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Averages over the samples in [t0, t1]: CPU per class (cores), RSS, stored/s, PostgreSQL rates."""
        xs = [s for s in self.samples if t0 <= s.t <= t1]
        if len(xs) < 2:
            return {}
        span = xs[-1].t - xs[0].t
        inner = xs[1:]  # each sample's CPU covers the interval before it
        classes = sorted({k for s in inner for k in s.cpu})
        cpu = {k: sum(s.cpu.get(k, 0.0) * (s.t - prev.t) for prev, s in zip(xs, inner, strict=False)) / span for k in classes}
        out: dict[str, Any] = {
            "seconds": span,
            "cpu_cores": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
            "machine_busy_cores": statistics.fmean(s.machine_busy for s in inner if s.machine_busy == s.machine_busy),
            "machine_busy_max_cores": max(s.machine_busy for s in inner if s.machine_busy == s.machine_busy),
            "rss_mb": {k: max(s.rss_mb.get(k, 0.0) for s in xs) for k in classes},
            "processes": {k: max(s.count.get(k, 0) for s in xs) for k in classes},
            "mem_used_mb_max": max(s.mem_used_mb for s in xs),
        }
        other: dict[str, float] = defaultdict(float)
        for prev, s in zip(xs, inner, strict=False):
            for k, v in s.other.items():
                other[k] += v * (s.t - prev.t) / span
        out["other_top_cores"] = dict(sorted(((k, round(v, 3)) for k, v in other.items()), key=lambda kv: -kv[1])[:5])
        if xs[0].stored is not None and xs[-1].stored is not None:
            out["stored_per_s"] = (xs[-1].stored - xs[0].stored) / span
            out["stored_delta"] = xs[-1].stored - xs[0].stored
        if xs[0].pg and xs[-1].pg:
            out["pg_per_s"] = {k: (xs[-1].pg[k] - xs[0].pg[k]) / span for k in xs[0].pg}
        return out


# -- the reader: API latency under the load, and report -> readable lag ------------------------------------


MIX = (("study", 0.3), ("trials", 0.3), ("trial", 0.2), ("best", 0.1), ("list", 0.1))


def reader(url: str, study_ids: list[str], read_rate: float, poll_rate: float, stop: Any, results: Any) -> None:
    """A separate process (its CPU is not the server's): the paced read mix and the lag poller."""
    import httpx

    out: dict[str, Any] = {"latencies": [], "lags": [], "errors": Counter(), "examples": [], "status": Counter()}
    known: dict[str, list[str]] = defaultdict(list)
    seen: set[tuple[str, str, int]] = set()
    rng = random.Random(0)

    def look(sid: str, body: list[dict[str, Any]], t_seen: float) -> None:
        ids = []
        for tr in body:
            ids.append(tr["trial_id"])
            m = tr.get("last_metrics") or {}
            ep, tr_t = m.get("epoch"), m.get("t_report")
            if isinstance(ep, int) and isinstance(tr_t, (int, float)) and (sid, tr["trial_id"], ep) not in seen:
                seen.add((sid, tr["trial_id"], ep))
                rep = m.get("reported_at")
                out["lags"].append((t_seen, t_seen - tr_t, (rep - tr_t) if isinstance(rep, (int, float)) else None))
        if ids:
            known[sid] = ids

    async def get(client: Any, kind: str, sid: str) -> None:
        path = {"list": "/v1/studies", "study": f"/v1/studies/{sid}", "trials": f"/v1/studies/{sid}/trials",
                "best": f"/v1/studies/{sid}/best",
                "trial": f"/v1/studies/{sid}/trials/{rng.choice(known[sid])}" if known[sid] else f"/v1/studies/{sid}/trials"}[kind]
        t = time.perf_counter()
        try:
            r = await client.get(path)
        except httpx.HTTPError as exc:
            out["errors"]["transport"] += 1
            if len(out["examples"]) < 5:
                out["examples"].append(f"GET {path}: {type(exc).__name__}: {exc!r}")
            return
        t_seen = time.time()
        out["latencies"].append((t_seen, kind, time.perf_counter() - t))
        out["status"][r.status_code] += 1
        if r.status_code != 200:
            out["errors"][f"http_{r.status_code}"] += 1
            if len(out["examples"]) < 5:
                out["examples"].append(f"GET {path} -> {r.status_code}: {r.text[:300]}")
        elif path.endswith("/trials"):
            look(sid, r.json(), t_seen)

    async def paced(client: Any, rate: float, pick: Any) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        i = 0
        while not stop.is_set():
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            i += 1
            if len(tasks) >= 64:  # saturated: skip this one (counted)
                out["errors"]["skipped_saturated"] += 1
                continue
            task = asyncio.create_task(get(client, *pick(i)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    async def main() -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0)
        kinds, weights = [k for k, _ in MIX], [w for _, w in MIX]
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            jobs = []
            if read_rate > 0:
                jobs.append(paced(client, read_rate, lambda i: (rng.choices(kinds, weights)[0], rng.choice(study_ids))))
            if poll_rate > 0:
                jobs.append(paced(client, poll_rate, lambda i: ("trials", study_ids[i % len(study_ids)])))
            await asyncio.gather(*jobs)

    try:
        asyncio.run(main())
    except Exception:
        out["errors"]["reader_crashed"] += 1
        out["examples"].append(traceback.format_exc()[-2000:])
    out["errors"], out["status"] = dict(out["errors"]), dict(out["status"])
    results.put(out)


@contextlib.contextmanager
def reading(url: str, study_ids: list[str], args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The reader process for the duration of the block; its results in the yielded dict afterwards."""
    ctx = mp.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=reader, args=(url, study_ids, args.read_rate, args.poll_rate, stop, results), daemon=True)
    proc.start()
    box: dict[str, Any] = {"pid": proc.pid}
    try:
        yield box
    finally:
        stop.set()
        try:
            box.update(results.get(timeout=60))
        except queue.Empty:
            box.update({"latencies": [], "lags": [], "errors": {"reader_lost": 1}, "examples": [], "status": {}})
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()


def pct(values: list[float], q: float) -> float:
    from bench._common import pct as _pct

    return _pct(values, q)


def read_summary(box: dict[str, Any], t0: float, t1: float) -> dict[str, Any]:
    lat = [(k, x) for t, k, x in box.get("latencies", []) if t0 <= t <= t1]
    lags = [(lag, drv) for t, lag, drv in box.get("lags", []) if t0 <= t <= t1]
    by: dict[str, list[float]] = defaultdict(list)
    for k, x in lat:
        by[k].append(x * 1000)
    allx = [x for xs in by.values() for x in xs]
    seen = [x for x, _ in lags]
    drv = [d for _, d in lags if d is not None]
    return {
        "requests": len(allx), "per_s": len(allx) / max(1e-9, t1 - t0),
        "p50_ms": pct(allx, 0.5), "p99_ms": pct(allx, 0.99), "max_ms": max(allx, default=0.0),
        "by_endpoint_ms": {k: {"n": len(v), "p50": pct(v, 0.5), "p99": pct(v, 0.99)} for k, v in sorted(by.items())},
        "lag_seen": len(seen), "lag_api_p50_s": pct(seen, 0.5), "lag_api_p99_s": pct(seen, 0.99),
        "lag_to_driver_p50_s_sampled": pct(drv, 0.5), "lag_to_driver_p99_s_sampled": pct(drv, 0.99),
    }


# -- shared set-up -------------------------------------------------------------------------------------


@contextlib.contextmanager
def database(admin: str | None, work: Path, name: str) -> Iterator[str]:
    if admin:
        from bench._common import postgres_database

        with postgres_database(admin) as url:
            yield url
    else:
        yield f"sqlite:///{work / name / 'caviar.db'}"


def proc_rss_mb(peaks: dict[str, dict[int, float]], cls: str) -> dict[str, float]:
    xs = list(peaks.get(cls, {}).values())
    return {"n": len(xs), "median": statistics.median(xs) if xs else 0.0, "max": max(xs, default=0.0)}


# -- phase 1: the real Ray path --------------------------------------------------------------------------


def run_ray(args: argparse.Namespace, work: Path, database_url: str) -> dict[str, Any]:
    from service.local import LocalHead, LocalServer

    data = work / "ray-data"
    (data / "datasets").mkdir(parents=True, exist_ok=True)
    os.environ["CAVIAR_DATA_DIR"] = str(data)
    n, per = args.studies, args.concurrent
    env = {"CAVIAR_QUOTA_ACTIVE_STUDIES": str(n), "CAVIAR_QUOTA_CONCURRENT_TRIALS": str(n * per)}
    if not args.ray_prestart:
        # Ray can prestart an idle worker per CPU when the first driver connects: with 256 virtual CPUs
        # that would be workers for CPUs that do not exist. (Measured at 4 x 16: no difference either way;
        # the ray::IDLE processes seen are the trial actors' worker processes starting up.)
        os.environ.update({"RAY_prestart_worker_first_driver": "0", "RAY_enable_worker_prestart": "0"})
    head = LocalHead(work, num_cpus=args.num_cpus)
    server = LocalServer(data, head, database_url=database_url, env=env)
    print(f"ray: {n} studies x {args.trials} trials x {args.epochs} epochs, {per} concurrent each ({n * per} at once), "
          f"zero_work (epoch_s {args.epoch_s:g}), {args.sampler} sampler, head with {args.num_cpus} virtual CPUs, "
          f"{database_url.split('://')[0]}", flush=True)
    monitor: Monitor | None = None
    out: dict[str, Any] = {}
    try:
        t = time.time()
        head.start()
        server.start()
        print(f"  head and server up in {time.time() - t:.1f} s", flush=True)
        holder: dict[str, Any] = {}
        monitor = Monitor(args.sample_s, database_url, reader_pid=lambda: holder.get("pid"),
                          roots=lambda: [x.proc.pid for x in (head, server) if x.proc is not None])
        monitor.start()
        time.sleep(2 * args.sample_s)
        idle = monitor.window(time.time() - 2 * args.sample_s - 1, time.time())
        with server.client() as client:
            t_submit = time.time()
            ids = [str(client.submit(definition(i, args.trials, args.epochs, per, args.sampler, args.epoch_s))["id"]) for i in range(n)]
            with reading(server.url, ids, args) as box:
                holder.update(box)
                last_print, statuses = 0.0, {}
                deadline = time.time() + args.timeout
                while time.time() < deadline:
                    statuses = {sid: client.study(sid) for sid in ids}
                    if all(s["status"] in ("completed", "failed", "cancelled") for s in statuses.values()):
                        break
                    if time.time() - last_print > 10:
                        last_print = time.time()
                        done = sum(sum(s["trial_counts"].values()) for s in statuses.values())
                        m = monitor.samples[-1] if monitor.samples else None
                        print(f"  {time.time() - t_submit:5.0f} s: {sum(s['status'] == 'running' for s in statuses.values())} running, "
                              f"{done} trials seen, {m.stored if m else '?'} results stored, machine {m.machine_busy if m else 0:.2f} cores busy, "
                              f"{m.mem_used_mb / 1024 if m else 0:.1f} GiB used", flush=True)
                    time.sleep(2)
            t_end = time.time()
        monitor.stop()
        out = ray_results(args, database_url, ids, statuses, monitor, box, t_submit, t_end)
        out["idle"] = idle
    finally:
        if monitor is not None and monitor.is_alive():
            monitor.stop()
        server.stop()
        head.stop()
    return out


def ray_results(args: argparse.Namespace, database_url: str, ids: list[str], statuses: dict[str, Any], monitor: Monitor,
                box: dict[str, Any], t_submit: float, t_end: float) -> dict[str, Any]:
    from service.store import Store

    store = Store(database_url)
    per_trial_missing: list[str] = []
    to_driver: list[float] = []
    reported: list[float] = []
    states: Counter[str] = Counter()
    rows = 0
    for sid in ids:
        for tr in store.trials.for_study(sid):
            states[tr.state] += 1
            got = store.trials.get(sid, tr.trial_id)
            hist = got[1] if got else []
            rows += len(hist)
            epochs = sorted(int(h["epoch"]) for h in hist)
            if epochs != list(range(1, args.epochs + 1)):
                per_trial_missing.append(f"{sid}/{tr.trial_id}: epochs {epochs[:3]}..{epochs[-3:]} ({len(epochs)})")
            for h in hist:
                if isinstance(h.get("t_report"), float) and isinstance(h.get("reported_at"), float):
                    to_driver.append(h["reported_at"] - h["t_report"])
                    reported.append(h["t_report"])
    store.db.dispose()
    expected = len(ids) * args.trials * args.epochs
    # the busy part of the run: from the first result to the last
    t0, t1 = (min(reported), max(reported)) if reported else (t_submit, t_end)
    win = monitor.window(t0, t1) if t1 - t0 > 3 * args.sample_s else monitor.window(t_submit, t_end)
    peaks = monitor.peak_rss
    rate = rows / max(1e-9, t1 - t0)
    started = [s["started_at"] for s in statuses.values() if s.get("started_at")]
    res = {
        "studies": len(ids), "statuses": dict(Counter(s["status"] for s in statuses.values())),
        "trial_states": dict(states), "expected_results": expected, "stored_results": rows,
        "trials_with_missing_epochs": len(per_trial_missing), "missing_examples": per_trial_missing[:5],
        "wall_s": t_end - t_submit, "results_span_s": t1 - t0, "results_per_s": rate,
        "first_result_after_submit_s": t0 - t_submit,
        "lag_report_to_driver_s": {"p50": pct(to_driver, 0.5), "p99": pct(to_driver, 0.99), "max": max(to_driver, default=0.0)},
        "reads": read_summary(box, t0, t1), "reader_errors": box.get("errors", {}), "reader_examples": box.get("examples", [])[:5],
        "window": win,
        "rss_per_process_mb": {k: proc_rss_mb(peaks, k) for k in ("driver", "trial actor", "job supervisor", "api", "ray core",
                                                                   "ray idle worker", "postgresql")},
        "ray_core_processes_rss_mb": {str(pid): round(v) for pid, v in peaks.get("ray core", {}).items()},
        "started_at": started[:3],
        "class_examples": {k: sorted(v) for k, v in monitor.examples.items()},
    }
    if rows and win.get("cpu_cores"):
        res["cpu_ms_per_result"] = {k: 1000 * v / rate for k, v in win["cpu_cores"].items()}
    return res


# -- phase 2: the control plane, simulated -----------------------------------------------------------------


def sim_driver(index: int, server: str, database_url: str, trials: int, epochs: int, steps: list[tuple[float, float]], n_drivers: int,
               ready: Any, go: Any, start_at: Any, results: Any, flush_n: int = 0) -> None:
    """One study's driver: submit, mark running, then the StoreCallback's calls for ``trials``
    concurrent trials, from one thread, at this driver's share of each step's rate."""
    t_import = time.perf_counter()
    from bench._common import FakeTrial
    from service.client import Client
    from service.definition import ACTIVE, StudyStatus
    from service.runner import callbacks, lower_priority
    from service.runner.callbacks import StoreCallback, store_for
    from service.settings import Settings
    from service.store import now

    lower_priority(Settings().driver_nice)  # as service.runner's main does
    if flush_n:  # --sim-flush-n 1: one transaction per result, as before the callback batched its writes
        callbacks.FLUSH_N = flush_n

    import_s = time.perf_counter() - t_import
    with Client(server) as client:
        sid = str(client.submit(definition(index, 10_000, epochs, min(1024, trials), "random"))["id"])
    store = store_for(database_url)
    store.studies.update(sid, only_if=ACTIVE, status=StudyStatus.RUNNING.value, started_at=now())
    cb = StoreCallback(sid, database_url, OBJECTIVE, MODE, epochs, METRICS)
    ready.put((index, sid, import_s))
    go.wait()
    t0 = start_at.value
    ends = []
    acc = 0.0
    for seconds, _rate in steps:
        acc += seconds
        ends.append(t0 + acc)

    def step_at(t: float) -> int:
        for i, e in enumerate(ends):
            if t < e:
                return i
        return len(ends)

    def period(t: float) -> float:
        i = min(step_at(t), len(steps) - 1)
        return trials * n_drivers / steps[i][1]  # each of the driver's trials reports once per period

    rng = random.Random(index)
    written: dict[str, list[int]] = {}
    failed: dict[str, list[int]] = defaultdict(list)
    errors: Counter[str] = Counter()
    # per step: calls, latency sum, latencies (ms), schedule delays (ms)
    stats: list[dict[str, Any]] = [{"calls": 0, "results": 0, "busy_s": 0.0, "lat_ms": [], "delay_ms": [], "commit_lag_ms": []}
                                   for _ in steps]
    slots: list[tuple[float, int]] = []
    current: dict[int, tuple[FakeTrial, int]] = {}  # slot -> (trial, epochs done)
    p0 = period(t0)
    for j in range(trials):
        heapq.heappush(slots, (t0 + p0 * (j + rng.random()) / trials, j))
    serial = 0

    def call(step: int, due: float, fn: Any, *a: Any) -> bool:
        t = time.time()
        ok = True
        try:
            fn(*a)
        except Exception as exc:
            ok = False
            errors[f"{fn.__name__}: {type(exc).__name__}: {str(exc)[:200]}"] += 1
        done = time.time()
        if step < len(stats):
            st = stats[step]
            st["calls"] += 1
            st["busy_s"] += done - t
            st["lat_ms"].append(1000 * (done - t))
            st["delay_ms"].append(1000 * max(0.0, t - due))
        return ok

    behind = 0  # results due before the end that the driver never got to (it fell behind: Tune would slow the trials)
    while slots:
        due, j = heapq.heappop(slots)
        if due >= ends[-1]:
            break
        if time.time() >= ends[-1]:
            behind += 1 + sum(1 for d, _ in slots if d < ends[-1])
            break
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        step = step_at(time.time())  # counted in the step in which it is written
        if j not in current:
            serial += 1
            trial = FakeTrial(f"{sid[:6]}_{index:03d}_{serial:06d}", {"x": rng.random(), "y": rng.random(), "epochs": epochs,
                                                                     "epoch_s": 0.0, "dataset": {"name": "digits"}})
            written[trial.trial_id] = []
            current[j] = (trial, 0)
            call(step, due, cb.on_trial_start, serial, [trial], trial)
        trial, done_epochs = current[j]
        epoch = done_epochs + 1
        value = (1.0 - (trial.config["x"] - 0.3) ** 2) * (1.0 - 0.5 ** epoch)
        trial.last_result = {"epoch": epoch, "val_accuracy": value, "t_report": due, "training_iteration": epoch,
                             "trial_id": trial.trial_id, "config": trial.config, "node_ip": f"10.0.0.{j % 250 + 1}"}
        ok = call(step, due, cb.on_trial_result, serial, [trial], trial, trial.last_result)
        if step < len(stats):
            stats[step]["results"] += 1
            if ok:
                stats[step]["commit_lag_ms"].append(1000 * (time.time() - due))
        (written[trial.trial_id] if ok else failed[trial.trial_id]).append(epoch)
        call(step, due, cb.on_step_end, serial, [])  # Tune's loop ends a step after each event: the callback's batch may flush
        if epoch >= epochs:
            call(step, due, cb.on_trial_complete, serial, [trial], trial)
            del current[j]
        else:
            current[j] = (trial, epoch)
        heapq.heappush(slots, (due + period(due), j))
    cb.on_experiment_end([])  # the batch still pending is written
    store.studies.finish(sid, StudyStatus.COMPLETED)

    def summary(st: dict[str, Any]) -> dict[str, Any]:
        return {"calls": st["calls"], "results": st["results"], "busy_s": st["busy_s"],
                "lat_ms": st["lat_ms"], "delay_ms": st["delay_ms"], "commit_lag_ms": st["commit_lag_ms"]}

    results.put({"index": index, "study_id": sid, "import_s": import_s, "written": written, "failed": dict(failed), "behind": behind,
                 "errors": dict(errors), "steps": [summary(st) for st in stats]})


def run_sim(args: argparse.Namespace, work: Path, database_url: str) -> dict[str, Any]:
    from service.local import LocalServer

    data = work / "sim-data"
    (data / "datasets").mkdir(parents=True, exist_ok=True)
    n, k = args.sim_drivers, args.sim_trials
    rates = [float(r) for r in args.sim_rates.split(",")]
    steps = [(args.sim_step_s, r) for r in rates]
    env = {"CAVIAR_QUOTA_ACTIVE_STUDIES": str(n), "CAVIAR_QUOTA_CONCURRENT_TRIALS": str(n * min(1024, k))}
    server = LocalServer(data, None, database_url=database_url, env=env)
    print(f"sim: {n} simulated drivers x {k} concurrent trials ({n * k} at once) x {args.epochs} epochs a trial, "
          f"offered {', '.join(f'{r:g}' for r in rates)} results/s for {args.sim_step_s:g} s each, {database_url.split('://')[0]}", flush=True)
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    reports: list[dict[str, Any]] = []
    monitor: Monitor | None = None
    try:
        server.start()
        ready, go, results = ctx.Queue(), ctx.Event(), ctx.Queue()
        start_at = ctx.Value("d", 0.0)
        for i in range(n):
            p = ctx.Process(target=sim_driver, args=(i, server.url, database_url, k, args.epochs, steps, n, ready, go, start_at, results,
                                                     args.sim_flush_n),
                            daemon=True)
            p.start()
            procs.append(p)
        got: list[tuple[int, str, float]] = []
        t = time.time()
        while len(got) < n:
            try:
                got.append(ready.get(timeout=1))
            except queue.Empty:
                dead = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode is not None]
                if dead or time.time() - t > 600:
                    raise RuntimeError(f"simulated drivers did not get ready (exited: {dead})") from None
        ids = [s for _, s, _ in sorted(got)]
        print(f"  drivers ready in {time.time() - t:.1f} s (imports {min(g[2] for g in got):.1f}-{max(g[2] for g in got):.1f} s)", flush=True)
        holder: dict[str, Any] = {}
        monitor = Monitor(args.sample_s, database_url, reader_pid=lambda: holder.get("pid"),
                          roots=lambda: [server.proc.pid] if server.proc is not None else [])
        monitor.start()
        time.sleep(2 * args.sample_s)
        idle = monitor.window(time.time() - 2 * args.sample_s - 1, time.time())
        with reading(server.url, ids, args) as box:
            holder.update(box)
            time.sleep(1.0)
            start_at.value = time.time() + 0.5
            go.set()
            total = sum(s for s, _ in steps)
            t_go = start_at.value
            while time.time() < t_go + total:
                time.sleep(min(10.0, max(0.1, t_go + total - time.time())))
                m = monitor.samples[-1] if monitor.samples else None
                if m is not None:
                    print(f"  {time.time() - t_go:5.0f} s: {m.stored} results stored, machine {m.machine_busy:.2f} cores busy, "
                          + ", ".join(f"{c} {v:.2f}" for c, v in sorted(m.cpu.items(), key=lambda kv: -kv[1])[:4]), flush=True)
            deadline = time.time() + 120
            while len(reports) < n and time.time() < deadline:
                try:
                    reports.append(results.get(timeout=1))
                except queue.Empty:
                    if not any(p.is_alive() for p in procs) and results.empty():
                        break
        monitor.stop()
        # the API serves a study up to MAX_STALE_S old: past that a read waits for a fresh one
        time.sleep(2.5)
        api_counts: dict[str, Any] = {}
        with server.client() as client:
            for sid in ids:
                api_counts[sid] = client.study(sid)["trial_counts"]
    finally:
        if monitor is not None and monitor.is_alive():
            monitor.stop()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        server.stop()
    return sim_results(args, database_url, steps, t_go, reports, ids, monitor, box, api_counts, idle, n)


def sim_results(args: argparse.Namespace, database_url: str, steps: list[tuple[float, float]], t_go: float, reports: list[dict[str, Any]],
                ids: list[str], monitor: Monitor, box: dict[str, Any], api_counts: dict[str, Any], idle: dict[str, Any],
                n: int) -> dict[str, Any]:
    from sqlalchemy import func, select

    from service.store import Store
    from service.store.models import MetricRow, TrialRow

    # no lost result: every epoch a driver wrote is stored, once; nothing a driver did not write
    store = Store(database_url)
    lost, extra, checked = 0, 0, 0
    problems: list[str] = []
    with store.db.session() as s:
        stored = {(sid, tid): cnt for sid, tid, cnt in s.execute(
            select(TrialRow.study_id, TrialRow.trial_id, func.count(MetricRow.pk)).join(MetricRow, MetricRow.trial_pk == TrialRow.pk)
            .group_by(TrialRow.study_id, TrialRow.trial_id))}
        epochs_col = {(sid, tid): e for sid, tid, e in s.execute(select(TrialRow.study_id, TrialRow.trial_id, TrialRow.epochs))}
    for r in reports:
        for tid, eps in r["written"].items():
            key = (r["study_id"], tid)
            want = len(set(eps)) + len(set(r["failed"].get(tid, [])) - set(eps))  # a failed call may still have committed
            have = stored.get(key, 0)
            checked += len(eps)
            if have < len(eps):
                lost += len(eps) - have
                if len(problems) < 5:
                    problems.append(f"{key}: {have} stored of {len(eps)} written")
            if have > want:
                extra += have - want
            if eps and epochs_col.get(key) != max(eps) and len(problems) < 5:
                problems.append(f"{key}: epochs {epochs_col.get(key)} != {max(eps)}")
    store.db.dispose()
    writer_errors = Counter()
    for r in reports:
        writer_errors.update(r["errors"])
    out_steps = []
    t = t_go
    for i, (seconds, rate) in enumerate(steps):
        t0, t1 = t, t + seconds
        t = t1
        warm = min(3.0, seconds / 4)
        win = monitor.window(t0 + warm, t1)
        lat = [x for r in reports for x in r["steps"][i]["lat_ms"]]
        delay = [x for r in reports for x in r["steps"][i]["delay_ms"]]
        commit = [x for r in reports for x in r["steps"][i]["commit_lag_ms"]]
        results_n = sum(r["steps"][i]["results"] for r in reports)
        calls = sum(r["steps"][i]["calls"] for r in reports)
        busy = [r["steps"][i]["busy_s"] / seconds for r in reports]
        reads = read_summary(box, t0 + warm, t1)
        row = {
            "offered_per_s": rate, "results_per_s": results_n / seconds, "store_calls_per_s": calls / seconds,
            "stored_per_s": win.get("stored_per_s"),
            "write_ms": {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "max": max(lat, default=0.0)},
            "driver_queue_ms": {"p50": pct(delay, 0.5), "p99": pct(delay, 0.99), "max": max(delay, default=0.0)},
            "lag_report_to_stored_ms": {"p50": pct(commit, 0.5), "p99": pct(commit, 0.99)},
            "driver_busy": {"median": statistics.median(busy) if busy else 0.0, "max": max(busy, default=0.0)},
            "reads": reads, "window": win,
        }
        if win.get("cpu_cores") and results_n:
            row["cpu_ms_per_result"] = {k: 1000 * v / (results_n / seconds) for k, v in win["cpu_cores"].items()}
        out_steps.append(row)
    counts_ok = True
    for r in reports:
        api = api_counts.get(r["study_id"]) or {}
        if sum(api.values()) != len(r["written"]):
            counts_ok = False
    return {
        "drivers": n, "trials_per_driver": args.sim_trials, "epochs": args.epochs, "reports": len(reports),
        "not_reached_at_end": sum(r.get("behind", 0) for r in reports),
        "results_written": checked, "lost_results": lost, "extra_results": extra, "problems": problems,
        "writer_errors": dict(writer_errors), "api_trial_counts_match": counts_ok,
        "reader_errors": box.get("errors", {}), "reader_examples": box.get("examples", [])[:5],
        "rss_per_process_mb": {k: proc_rss_mb(monitor.peak_rss, k) for k in ("sim driver", "api", "postgresql", "reader")},
        "idle": idle, "steps": out_steps,
        "class_examples": {k: sorted(v) for k, v in monitor.examples.items()},
    }


# -- output --------------------------------------------------------------------------------------------


def fmt_cpu(win: dict[str, Any], k: int = 5) -> str:
    cpu = win.get("cpu_cores") or {}
    return ", ".join(f"{c} {v:.2f}" for c, v in list(cpu.items())[:k])


def print_ray(r: dict[str, Any]) -> None:
    from bench._common import table

    w, rd = r["window"], r["reads"]
    rss = r["rss_per_process_mb"]
    rows = [
        ["studies / statuses", f"{r['studies']} / {r['statuses']}"],
        ["trial states", str(r["trial_states"])],
        ["results stored / expected", f"{r['stored_results']} / {r['expected_results']} ({r['trials_with_missing_epochs']} trials missing epochs)"],
        ["wall (submit -> all finished)", f"{r['wall_s']:.1f} s (first result {r['first_result_after_submit_s']:.1f} s after submit)"],
        ["results ingested/s (first -> last result)", f"{r['results_per_s']:.0f} over {r['results_span_s']:.1f} s"],
        ["store: commits / rows inserted / updated per s", " / ".join(f"{w.get('pg_per_s', {}).get(k, float('nan')):.0f}"
                                                                     for k in ("xact_commit", "tup_inserted", "tup_updated"))],
        ["lag trial report -> driver callback p50/p99", f"{1000 * r['lag_report_to_driver_s']['p50']:.0f} / {1000 * r['lag_report_to_driver_s']['p99']:.0f} ms "
                                                        f"(max {1000 * r['lag_report_to_driver_s']['max']:.0f})"],
        ["lag trial report -> seen via API p50/p99", f"{1000 * rd['lag_api_p50_s']:.0f} / {1000 * rd['lag_api_p99_s']:.0f} ms ({rd['lag_seen']} seen)"],
        ["API p50/p99 under load", f"{rd['p50_ms']:.1f} / {rd['p99_ms']:.1f} ms ({rd['per_s']:.0f} req/s); "
                                   + "; ".join(f"{k} {v['p99']:.0f}" for k, v in rd["by_endpoint_ms"].items())],
        ["API errors", str(r["reader_errors"] or "none")],
        ["machine CPU busy (mean / max, of 2)", f"{w.get('machine_busy_cores', float('nan')):.2f} / {w.get('machine_busy_max_cores', float('nan')):.2f} cores"],
        ["CPU by class (cores)", fmt_cpu(w, 8)],
        ["CPU ms per result by class", ", ".join(f"{k} {v:.1f}" for k, v in list(r.get("cpu_ms_per_result", {}).items())[:8])],
        ["RSS per driver (median / max)", f"{rss['driver']['median']:.0f} / {rss['driver']['max']:.0f} MB ({rss['driver']['n']} drivers)"],
        ["RSS per trial actor (median / max)", f"{rss['trial actor']['median']:.0f} / {rss['trial actor']['max']:.0f} MB ({rss['trial actor']['n']} actors)"],
        ["RSS per job supervisor (median)", f"{rss['job supervisor']['median']:.0f} MB ({rss['job supervisor']['n']})"],
        ["Ray core processes (summed RSS)", f"{sum(r['ray_core_processes_rss_mb'].values())} MB in {len(r['ray_core_processes_rss_mb'])} processes"],
        ["memory used (machine, peak)", f"{w.get('mem_used_mb_max', 0) / 1024:.1f} GiB"],
    ]
    print()
    print(table(["ray phase (real Ray)", ""], rows, left=2))


def print_sim(r: dict[str, Any]) -> None:
    from bench._common import table

    print()
    print(f"sim phase: {r['drivers']} drivers x {r['trials_per_driver']} trials; {r['results_written']} results written, "
          f"{r['lost_results']} lost, {r['extra_results']} extra; writer errors: {r['writer_errors'] or 'none'}; "
          f"API errors: {r['reader_errors'] or 'none'}; RSS per simulated driver {r['rss_per_process_mb']['sim driver']['median']:.0f} MB")
    rows = []
    for s in r["steps"]:
        w, rd = s["window"], s["reads"]
        pg = w.get("pg_per_s") or {}
        rows.append([
            f"{s['offered_per_s']:g}", f"{s['results_per_s']:.0f}", f"{s['stored_per_s'] or 0:.0f}",
            f"{pg.get('xact_commit', float('nan')):.0f}",
            f"{s['write_ms']['p50']:.1f}/{s['write_ms']['p99']:.0f}",
            f"{s['lag_report_to_stored_ms']['p50']:.0f}/{s['lag_report_to_stored_ms']['p99']:.0f}",
            f"{1000 * rd['lag_api_p50_s']:.0f}/{1000 * rd['lag_api_p99_s']:.0f}",
            f"{s['driver_busy']['median']:.2f}/{s['driver_busy']['max']:.2f}",
            f"{rd['p50_ms']:.1f}/{rd['p99_ms']:.0f}",
            f"{w.get('machine_busy_cores', float('nan')):.2f}",
            fmt_cpu(w, 4),
        ])
    print(table(["offered/s", "written/s", "stored/s", "commits/s", "write ms p50/p99", "report->stored ms p50/p99",
                 "report->API ms p50/p99", "driver busy med/max", "API ms p50/p99", "CPU busy", "CPU by class (cores)"], rows, left=0))


# -- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from bench._common import Checks, json_path, parser, write_json

    ap = parser(__doc__, "ray: 2 studies x 4 trials x 5 epochs; sim: 4 drivers x 25 trials at 100 results/s for 10 s", "control_plane.json")
    ap.add_argument("--database-url", default=None,
                    help="a postgresql:// admin URL: a fresh caviar_bench_* database per phase, dropped after (default: SQLite)")
    ap.add_argument("--phases", default="ray,sim", help="ray, sim or both (default)")
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--trials", type=int, default=48, help="trials per study (ray phase)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--concurrent", type=int, default=16, help="max_concurrent_trials per study (ray phase)")
    ap.add_argument("--num-cpus", type=int, default=256, help="virtual CPUs the Ray head declares")
    ap.add_argument("--ray-prestart", action="store_true", help="keep Ray's worker prestart (one idle worker per virtual CPU)")
    ap.add_argument("--sampler", default="tpe")
    ap.add_argument("--epoch-s", type=float, default=0.0, help="seconds a zero_work epoch sleeps (ray phase)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="ray phase: give up after this long")
    ap.add_argument("--sim-drivers", type=int, default=20)
    ap.add_argument("--sim-trials", type=int, default=50, help="concurrent trials per simulated driver")
    ap.add_argument("--sim-rates", default="150,300,600,1200", help="offered results/s, all drivers together, one step each")
    ap.add_argument("--sim-step-s", type=float, default=30.0)
    ap.add_argument("--sim-flush-n", type=int, default=0, help="results per store transaction in the simulated drivers (0: the "
                    "callback's own batching; 1: one transaction per result, as before it batched)")
    ap.add_argument("--sim-compare-unbatched", action="store_true", help="run the sim phase twice in this run: --sim-flush-n 1, then batched")
    ap.add_argument("--read-rate", type=float, default=50.0, help="paced API reads per second (the mix)")
    ap.add_argument("--poll-rate", type=float, default=10.0, help="GET .../trials per second, round-robin over the studies (lag)")
    ap.add_argument("--sample-s", type=float, default=2.0, help="the monitor's period")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        if "--phases" not in " ".join(argv if argv is not None else sys.argv[1:]):
            args.phases = "sim"  # CI's time: the ray phase's checks are the e2e tests' (see above)
        args.studies, args.trials, args.epochs, args.concurrent = 2, 4, 5, 2
        args.sim_drivers, args.sim_trials, args.sim_rates, args.sim_step_s = 4, 25, "100", 10.0
        args.read_rate, args.poll_rate, args.sample_s = 20.0, 5.0, 1.0
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]

    def _terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    work = Path(tempfile.mkdtemp(prefix="caviar-cp-"))
    install_plugin(work)
    admin = args.database_url if args.database_url and args.database_url.startswith("postgresql") else None
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "cpus": os.cpu_count(),
                           "load_average_before": os.getloadavg()}
    checks = Checks("control_plane")
    ok = False
    try:
        if "ray" in phases:
            with database(admin, work, "ray") as url:
                r = out["ray"] = run_ray(args, work, url)
            print_ray(r)
            checks.check(r["stored_results"] == r["expected_results"] and r["trials_with_missing_epochs"] == 0,
                         f"ray: no lost result ({r['stored_results']} stored of {r['expected_results']}, "
                         f"{r['trials_with_missing_epochs']} trials missing epochs)")
            checks.check(r["statuses"] == {"completed": args.studies} and r["trial_states"] == {"completed": args.studies * args.trials},
                         f"ray: every study and trial completed ({r['statuses']}, {r['trial_states']})")
            api_errors = {k: v for k, v in r["reader_errors"].items() if k != "skipped_saturated"}
            checks.check(not api_errors, f"ray: no API error during the run ({api_errors or 'none'}; reads skipped with 64 in flight: "
                                         f"{r['reader_errors'].get('skipped_saturated', 0)})")
        if "sim" in phases and args.sim_compare_unbatched:  # the same load, one transaction per result, first
            with database(admin, work, "sim1") as url:
                s = out["sim_unbatched"] = run_sim(argparse.Namespace(**{**vars(args), "sim_flush_n": 1}), work, url)
            print("\nsim, one transaction per result (--sim-flush-n 1):")
            print_sim(s)
            print("\nsim, batched (the callback's own):")
        if "sim" in phases:
            with database(admin, work, "sim") as url:
                s = out["sim"] = run_sim(args, work, url)
            print_sim(s)
            checks.check(s["lost_results"] == 0 and s["extra_results"] == 0 and not s["problems"] and s["reports"] == args.sim_drivers,
                         f"sim: no lost result ({s['results_written']} written, {s['lost_results']} lost, {s['extra_results']} extra, "
                         f"{s['reports']}/{args.sim_drivers} drivers reported)")
            checks.check(not s["writer_errors"], f"sim: no store call raised ({s['writer_errors'] or 'none'})")
            checks.check(s["api_trial_counts_match"], "sim: the API's trial counts match what the drivers wrote")
            api_errors = {k: v for k, v in s["reader_errors"].items() if k != "skipped_saturated"}
            checks.check(not api_errors, f"sim: no API error during the run ({api_errors or 'none'}; reads skipped with 64 in flight: "
                                         f"{s['reader_errors'].get('skipped_saturated', 0)})")
            if args.smoke:
                got = s["steps"][0]["results_per_s"]
                checks.check(got >= 50.0, f"sim: the drivers sustained >= 50 results/s of the 100 offered ({got:.0f})")
            else:
                best = max((st for st in s["steps"] if st["results_per_s"] >= 0.95 * st["offered_per_s"]),
                           key=lambda st: st["offered_per_s"], default=None)
                out["sim_sustained_per_s"] = best["offered_per_s"] if best else 0.0
                print(f"\nhighest offered rate sustained (>= 95% written): {out['sim_sustained_per_s']:g} results/s "
                      f"(goal >= {GOAL_RESULTS_PER_S:g}); API p99 there: {best['reads']['p99_ms'] if best else float('nan'):.0f} ms "
                      f"(goal <= {GOAL_API_P99_MS:g})")
        ok = not checks.failed
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work dir kept: {work}")
    out["checks"] = checks.as_dict()
    write_json(json_path(args, "control_plane"), out)
    return checks.exit_code()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("control_plane: interrupted", file=sys.stderr)
        sys.exit(130)
