"""Store under load: concurrent study drivers writing trial results while the API serves reads.

What runs:
  server   - `caviar serve` in a subprocess (uvicorn over HTTP) on a fresh CAVIAR_DATA_DIR, without
             Ray (RAY_ADDRESS points at a closed port: studies stay queued, the dispatcher idles)
  writers  - N processes (spawn; 8 by default), each playing one study's driver: it submits its
             study with service.client.Client, marks it running as the driver (service.runner) does,
             then feeds trials to the driver's own StoreCallback as Ray Tune does (on_trial_start ->
             on_trial_result per epoch -> on_trial_complete, which write trials.upsert(running) ->
             trials.add_epoch -> trials.upsert(completed/stopped_early/failed)), one store call every
             20-50 ms, and finally studies.finish(completed). Trials are small stand-ins with what the
             callback reads (trial_id, config, last_result); no Ray cluster, ray.tune is imported.
  readers  - this process: an open-loop paced mix (~50/s) of GET /v1/studies, /v1/studies/{id},
             /v1/studies/{id}/trials, /v1/studies/{id}/trials/{trial_id}, /v1/studies/{id}/best
Then the server is stopped and the database checked: SQLite `PRAGMA integrity_check`, and every
epoch a writer says it wrote is in caviar_metrics exactly once with the values it wrote, trials'
`epochs`/`best_value`/`state`/`config` match, per-study counts match (also as the API reports them).

Errors (exit code 1, with --smoke as without; each is an invariant the run asserts): any 5xx (a 503 with Retry-After is allowed, counted apart), any response
mentioning "database is locked", any other unexpected HTTP status or transport error, any writer
exception, an integrity or consistency failure.

    python -m bench.store_load                     # the 5-minute run on SQLite (JSON: docs/bench/store_load_sqlite_300s.json)
    python -m bench.store_load --smoke             # 12 s of load (CI)
    python -m bench.store_load --smoke --database-url postgresql://postgres@127.0.0.1:5432/postgres
                                                   # a fresh caviar_bench_<random> database, dropped after
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

from bench._common import DOCS_BENCH, Checks, parser, pct, postgres_database, table, write_json
from service.api.readcache import MAX_STALE_S
from service.client import Client
from service.local import LocalServer

LOCKED = "database is locked"
MAX_EPOCHS = 30  # fixed.epochs of the benchmark's studies; ASHA-like rungs below cut most trials short
RUNGS = (2, 6, 18)  # grace 2, reduction factor 3: a trial stops at a rung with probability 2/3
SMOKE_S = 12.0  # --smoke (CI, twice: SQLite and PostgreSQL): seconds of load; the full run is 300
OBJECTIVE, MODE = "val_accuracy", "max"


# -- what a study driver writes (deterministic, so the checker recomputes it) -----------------------


def definition(index: int) -> dict[str, Any]:
    return {
        "name": f"store-load-{index}",
        "trainable": "mlp_bn_softmax",
        "dataset": {"name": "digits", "validation_fraction": 0.2, "seed": 0},
        "search_space": {
            "lr": {"type": "float", "low": 1.0e-3, "high": 0.3, "log": True},
            "width": {"type": "int", "low": 32, "high": 256, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
        "fixed": {"epochs": MAX_EPOCHS, "batch_size": 64},
        "objective": {"metric": OBJECTIVE, "mode": MODE},
        "sampler": {"type": "tpe", "seed": index},
        "scheduler": {"type": "asha", "max_t": MAX_EPOCHS, "grace_period": RUNGS[0], "reduction_factor": 3},
        "budget": {"num_trials": 10_000, "max_concurrent_trials": 1},
        "resources_per_trial": {"cpu": 1, "gpu": 0},
    }


def trial_plan(study_id: str, trial_id: str) -> tuple[dict[str, Any], int, int | None]:
    """(config, epochs it runs, epoch at which it diverges or None)."""
    rng = random.Random(f"{study_id}/{trial_id}")
    config = {"lr": 10 ** rng.uniform(-3, math.log10(0.3)), "width": int(2 ** rng.uniform(5, 8)), "dropout": rng.uniform(0, 0.3),
              "epochs": MAX_EPOCHS, "batch_size": 64}
    epochs = MAX_EPOCHS
    for rung in RUNGS:
        if rng.random() < 2 / 3:
            epochs = rung
            break
    diverge = rng.randint(1, epochs) if rng.random() < 0.03 else None
    return config, epochs, diverge


def metrics_for(study_id: str, trial_id: str, epoch: int, lr: float, diverge: int | None) -> dict[str, Any]:
    """One epoch's report as a built-in trainable sends it (epoch, its declared metrics, diverged)."""
    rng = random.Random(f"{study_id}/{trial_id}/{epoch}")
    if diverge is not None and epoch >= diverge:
        return {"epoch": epoch, "train_loss": float("nan"), "val_loss": float("nan"), "val_accuracy": 0.1,
                "val_confidence": 0.1, "lr": lr, "samples_per_s": rng.uniform(2e4, 6e4), "diverged": True}
    progress = 1 - math.exp(-epoch / 6)
    acc = min(0.99, 0.1 + 0.85 * progress + rng.gauss(0, 0.01))
    return {"epoch": epoch, "train_loss": 2.3 * (1 - progress) + 0.05 + abs(rng.gauss(0, 0.02)),
            "val_loss": 2.3 * (1 - progress) + 0.1 + abs(rng.gauss(0, 0.03)), "val_accuracy": acc,
            "val_confidence": min(1.0, acc + rng.uniform(0, 0.05)), "lr": lr, "samples_per_s": rng.uniform(2e4, 6e4),
            "diverged": False}


def stored_form(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps of an epoch: non-finite floats as null (trials.add_epoch)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def without_reported_at(values: Any) -> tuple[dict[str, Any] | None, bool]:
    """(an epoch as stored, less the ``reported_at`` StoreCallback adds; whether that was a time)."""
    values = json.loads(values) if isinstance(values, str) else values
    if not isinstance(values, dict):
        return None, False
    rest = dict(values)
    return rest, isinstance(rest.pop("reported_at", None), float)


# -- a writer process (one study's driver) -------------------------------------------------------------


def writer(index: int, server: str, database_url: str, duration: float, interval_ms: tuple[float, float],
           ready: Any, go: Any, results: Any, progress: Any) -> None:
    t0 = time.perf_counter()
    from bench._common import FakeTrial, store_callback
    from service.definition import ACTIVE, StudyDefinition, StudyStatus, freeze
    from service.runner.callbacks import store_for
    from service.store import now

    import_s = time.perf_counter() - t0
    heavy = sorted(m for m in ("torch", "ray", "optuna", "numpy") if m in sys.modules)
    retries: Counter[str] = Counter()  # the store's own "busy/locked, retrying" log records, where it retries

    class _Retries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if "busy" in msg.lower() or "locked" in msg.lower():
                retries[msg[:200]] += 1

    store_log = logging.getLogger("caviar.store")
    store_log.addHandler(_Retries())
    store_log.setLevel(logging.INFO)
    store_log.propagate = False
    store = store_for(database_url)  # the one Store of this process, which the callback writes through too
    errors: Counter[tuple[str, str, str]] = Counter()
    tracebacks: dict[tuple[str, str, str], str] = {}
    latencies: list[float] = []

    def call(name: str, fn: Any, *args: Any, **kw: Any) -> bool:
        t = time.perf_counter()
        try:
            fn(*args, **kw)
            ok = True
        except Exception as exc:
            key = (name, type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
            errors[key] += 1
            tracebacks.setdefault(key, traceback.format_exc()[-3000:])
            ok = False
        latencies.append(time.perf_counter() - t)
        progress[2 * index + (0 if ok else 1)] += 1
        return ok

    defn = definition(index)
    study_id = None
    try:
        with Client(server) as client:
            study_id = str(client.submit(defn)["id"])
        created_via = "api"
    except Exception as exc:  # keep the benchmark going: create the study in the store, but count it
        key = ("POST /v1/studies", type(exc).__name__, str(exc).splitlines()[0][:300])
        errors[key] += 1
        tracebacks.setdefault(key, traceback.format_exc()[-3000:])
        d = StudyDefinition.model_validate(defn)
        study_id = store.studies.create(d.name, freeze(d, d.space())).id
        created_via = "store"
    callback = store_callback(study_id, database_url, OBJECTIVE, MODE, MAX_EPOCHS)
    ready.put((index, study_id, import_s, heavy))
    go.wait()

    lo, hi = interval_ms[0] / 1000, interval_ms[1] / 1000
    pace = random.Random(index)
    started = time.monotonic()
    deadline = started + duration
    next_at = started

    def tick() -> None:
        nonlocal next_at
        next_at = max(next_at + pace.uniform(lo, hi), time.monotonic())
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    call("studies.update(running)", store.studies.update, study_id, only_if=ACTIVE, status=StudyStatus.RUNNING.value, started_at=now())
    trials: dict[str, dict[str, Any]] = {}
    n = 0
    while time.monotonic() < deadline:
        trial_id = f"{study_id[:5]}_{n:05d}"
        n += 1
        config, epochs, diverge = trial_plan(study_id, trial_id)
        t = trials[trial_id] = {"written": [], "failed": [], "start_ok": False, "final": None, "final_ok": False}
        trial = FakeTrial(trial_id, {**config, "dataset": defn["dataset"]})  # Tune's config carries the dataset; the store's does not
        tick()
        t["start_ok"] = call("on_trial_start", callback.on_trial_start, n, [trial], trial)
        state = "stopped_early"
        for epoch in range(1, epochs + 1):
            tick()
            m = metrics_for(study_id, trial_id, epoch, config["lr"], diverge)
            trial.last_result = {**m, "training_iteration": epoch, "trial_id": trial_id, "config": trial.config}
            ok = call("on_trial_result", callback.on_trial_result, n, [trial], trial, trial.last_result)
            (t["written"] if ok else t["failed"]).append(epoch)
            if m["diverged"]:
                state = "failed"
                break
            if epoch == MAX_EPOCHS:
                state = "completed"
            if time.monotonic() >= deadline:  # the run ends: the trial is cut short like a stopped one
                break
        tick()
        t["final"] = state  # what the callback's trial_outcome must make of the last result
        t["final_ok"] = call("on_trial_complete", callback.on_trial_complete, n, [trial], trial)
    finish_ok = call("studies.finish", store.studies.finish, study_id, StudyStatus.COMPLETED)
    elapsed = time.monotonic() - started
    results.put({
        "index": index, "study_id": study_id, "created_via": created_via, "import_s": import_s, "heavy_modules": heavy,
        "elapsed_s": elapsed, "trials": trials, "finish_ok": finish_ok, "latencies": latencies,
        "store_retries": sum(retries.values()), "store_retry_examples": [m for m, _ in retries.most_common(3)],
        "errors": [{"call": k[0], "type": k[1], "message": k[2], "count": c, "traceback": tracebacks[k]} for k, c in errors.items()],
    })


# -- the server --------------------------------------------------------------------------------------


def server_for(data_dir: Path, database_url: str, writers: int) -> LocalServer:
    """`caviar serve` with no Ray (the writers play the study drivers)."""
    # one active study per writer must fit the per-owner quota (all writers are owner "local")
    quota = max(writers, int(os.environ.get("CAVIAR_QUOTA_ACTIVE_STUDIES", "8")))
    return LocalServer(data_dir, None, database_url=database_url, env={"CAVIAR_QUOTA_ACTIVE_STUDIES": str(quota)})


def log_findings(server: LocalServer) -> dict[str, Any]:
    text = server.log_path.read_text(errors="replace")
    first = text.find("Traceback")
    return {"log": str(server.log_path), "tracebacks": text.count("Traceback (most recent call last)"),
            "locked_mentions": text.lower().count(LOCKED), "status_500_lines": text.count('" 500'),
            "store_busy_lines": text.count("store busy"), "store_unavailable_lines": text.count("store unavailable"),
            "first_traceback": text[first:first + 4000] if first >= 0 else None}


# -- the readers --------------------------------------------------------------------------------------


MIX = (("list", 0.10), ("study", 0.25), ("trials", 0.25), ("trial", 0.25), ("best", 0.15))


async def read_load(server: str, study_ids: list[str], rate: float, duration: float, max_in_flight: int) -> dict[str, Any]:
    rng = random.Random(0)
    known: dict[str, list[str]] = defaultdict(list)  # trial ids seen in /trials responses (they exist)
    by_status: Counter[str] = Counter()
    by_endpoint: Counter[str] = Counter()
    latencies: list[float] = []
    per_endpoint: dict[str, list[float]] = defaultdict(list)
    errors: list[dict[str, Any]] = []
    counts = Counter[str]()
    in_flight = 0
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]

    def note(kind: str, detail: str) -> None:
        counts[kind] += 1
        if sum(1 for e in errors if e["kind"] == kind) < 5:
            errors.append({"kind": kind, "detail": detail[:2000]})

    async def one(client: httpx.AsyncClient, kind: str) -> None:
        nonlocal in_flight
        sid = rng.choice(study_ids)
        if kind == "trial" and not known[sid]:
            kind = "trials"
        path = {"list": "/v1/studies", "study": f"/v1/studies/{sid}", "trials": f"/v1/studies/{sid}/trials",
                "best": f"/v1/studies/{sid}/best", "trial": f"/v1/studies/{sid}/trials/{rng.choice(known[sid] or [''])}"}[kind]
        by_endpoint[kind] += 1
        t = time.perf_counter()
        try:
            r = await client.get(path)
        except httpx.HTTPError as exc:
            note("transport", f"GET {path} at {time.perf_counter() - start:.1f} s, after {time.perf_counter() - t:.3f} s: "
                              f"{type(exc).__name__}: {exc!r}")
            return
        finally:
            in_flight -= 1
        latencies.append(time.perf_counter() - t)
        per_endpoint[kind].append(latencies[-1])
        by_status[str(r.status_code)] += 1
        body = r.text
        if LOCKED in body.lower():
            note("locked", f"GET {path} -> {r.status_code}: {body}")
        if r.status_code == 503 and "retry-after" in r.headers:
            note("503_retry_after", f"GET {path} -> 503 Retry-After {r.headers['retry-after']}: {body}")
        elif r.status_code >= 500:
            note("5xx", f"GET {path} -> {r.status_code}: {body}")
        elif r.status_code != 200:
            note("unexpected_status", f"GET {path} -> {r.status_code}: {body}")
        elif kind == "trials":
            ids = [t["trial_id"] for t in r.json()]
            if ids:
                known[sid] = ids

    # idle connections expire before uvicorn's 5 s keep-alive timeout closes them: reusing one the
    # server is closing at that moment is a client-side race (ReadError), not the store's doing
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight, keepalive_expiry=2.0)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=server, timeout=30, limits=limits) as client:
        start = time.perf_counter()
        i = 0
        while (due := start + i / rate) < start + duration:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            i += 1
            if in_flight >= max_in_flight:
                counts["skipped_saturated"] += 1
                continue
            in_flight += 1
            task = asyncio.create_task(one(client, rng.choices(kinds, weights)[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {"elapsed_s": elapsed, "scheduled": i, "responses": len(latencies), "by_status": dict(by_status),
            "by_endpoint": dict(by_endpoint), "latencies": latencies,
            "latency_by_endpoint_ms": {k: {"n": len(v), "p50": pct(v, 0.5) * 1000, "p99": pct(v, 0.99) * 1000}
                                       for k, v in sorted(per_endpoint.items())}, "counts": dict(counts), "errors": errors}


# -- checks ------------------------------------------------------------------------------------------


def integrity(database_url: str) -> str | None:
    if not database_url.startswith("sqlite"):
        return None
    conn = sqlite3.connect(database_url.split("///", 1)[-1])
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        fk = conn.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        conn.close()
    result = "ok" if rows == ["ok"] else "; ".join(map(str, rows))[:2000]
    return result if not fk else f"{result}; foreign_key_check: {fk[:10]}"


def consistency(database_url: str, reports: list[dict[str, Any]], api_counts: dict[str, Any]) -> dict[str, Any]:
    """What is in the database against what the writers say they wrote, in plain SQL (not through the
    store's code, which is what is checked)."""
    from sqlalchemy import create_engine, text

    from service.store import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(database_url))
    problems: list[str] = []
    ambiguous: list[str] = []
    totals = Counter[str]()

    def problem(msg: str) -> None:
        totals["problems"] += 1
        if len(problems) < 50:
            problems.append(msg)

    try:
        with engine.connect() as c:
            for rep in reports:
                sid = rep["study_id"]
                study = c.execute(text("SELECT status FROM caviar_studies WHERE id = :s"), {"s": sid}).one_or_none()
                if study is None:
                    problem(f"{sid}: no study row")
                    continue
                if rep["finish_ok"] and study.status != "completed":
                    problem(f"{sid}: status {study.status}, the writer finished it as completed")
                trial_rows = {r.trial_id: r for r in c.execute(text(
                    "SELECT pk, trial_id, state, config, epochs, best_value, last_metrics, started_at, finished_at FROM caviar_trials WHERE study_id = :s"),
                    {"s": sid})}
                metric_rows: dict[int, list[tuple[int, Any]]] = defaultdict(list)
                for r in c.execute(text(
                        "SELECT m.trial_pk, m.epoch, m.\"values\" FROM caviar_metrics m JOIN caviar_trials t ON t.pk = m.trial_pk WHERE t.study_id = :s"),
                        {"s": sid}):
                    metric_rows[r[0]].append((r[1], r[2]))
                expected_trials = {tid for tid, t in rep["trials"].items() if t["start_ok"] or t["written"] or t["final_ok"]}
                for tid in sorted(expected_trials - trial_rows.keys()):
                    problem(f"{sid}/{tid}: the writer wrote it; no trial row")
                for tid in sorted(trial_rows.keys() - rep["trials"].keys()):
                    problem(f"{sid}/{tid}: a trial row no writer wrote")
                for tid in sorted(trial_rows.keys() & rep["trials"].keys() - expected_trials):
                    ambiguous.append(f"{sid}/{tid}: every call for it raised, yet the row exists")
                n_metrics = 0
                states = Counter[str]()
                for tid, t in rep["trials"].items():
                    row = trial_rows.get(tid)
                    if row is None:
                        continue
                    states[row.state] += 1
                    config, _, diverge = trial_plan(sid, tid)
                    stored = metric_rows.get(row.pk, [])
                    n_metrics += len(stored)
                    epochs_stored = Counter(e for e, _ in stored)
                    for e, k in epochs_stored.items():
                        if k > 1:
                            problem(f"{sid}/{tid}: epoch {e} stored {k} times")
                    for e in t["written"]:
                        if e not in epochs_stored:
                            problem(f"{sid}/{tid}: epoch {e} written, not stored")
                    for e in sorted(set(epochs_stored) - set(t["written"])):
                        (ambiguous.append if e in t["failed"] else problem)(f"{sid}/{tid}: epoch {e} stored, "
                                                                            + ("its add_epoch raised" if e in t["failed"] else "never written"))
                    for e, stored_values in stored:
                        want = stored_form(metrics_for(sid, tid, e, config["lr"], diverge))
                        values, timed = without_reported_at(stored_values)
                        if values != want or not timed:
                            problem(f"{sid}/{tid}: epoch {e} stored {stored_values}, written {want} and reported_at")
                    written = t["written"]
                    want_epochs = max(written) if written else 0
                    if not t["failed"] and row.epochs != want_epochs:
                        problem(f"{sid}/{tid}: epochs {row.epochs}, max epoch written {want_epochs}")
                    last, _ = without_reported_at(row.last_metrics)
                    if not t["failed"] and written and last != stored_form(metrics_for(sid, tid, max(written), config["lr"], diverge)):
                        problem(f"{sid}/{tid}: last_metrics {last} are not epoch {max(written)}'s")
                    accs = [metrics_for(sid, tid, e, config["lr"], diverge)["val_accuracy"] for e in written]
                    if not t["failed"] and accs and (row.best_value is None or abs(row.best_value - max(accs)) > 1e-12):
                        problem(f"{sid}/{tid}: best_value {row.best_value}, max {OBJECTIVE} written {max(accs)}")
                    if t["final_ok"] and row.state != t["final"]:
                        problem(f"{sid}/{tid}: state {row.state}, the writer finished it as {t['final']}")
                    if t["final_ok"] and row.finished_at is None:
                        problem(f"{sid}/{tid}: finished, finished_at is null")
                    if t["start_ok"] and row.started_at is None:
                        problem(f"{sid}/{tid}: started, started_at is null")
                    stored_config = json.loads(row.config) if isinstance(row.config, str) else row.config
                    if t["start_ok"] and stored_config != config:
                        problem(f"{sid}/{tid}: config {stored_config}, written {config} (without the dataset)")
                written_total = sum(len(t["written"]) for t in rep["trials"].values())
                totals["trials"] += len(trial_rows)
                totals["metric_rows"] += n_metrics
                totals["epochs_written"] += written_total
                if n_metrics < written_total:
                    problem(f"{sid}: {n_metrics} metric rows, the writer wrote {written_total} epochs")
                if len(trial_rows) < len(expected_trials):
                    problem(f"{sid}: {len(trial_rows)} trials, the writer wrote {len(expected_trials)}")
                api = api_counts.get(sid)
                if isinstance(api, dict):
                    got = {k: v for k, v in api.items() if v}
                    if got != dict(states):
                        problem(f"{sid}: the API's trial_counts {got}, the rows' {dict(states)}")
                else:
                    problem(f"{sid}: GET /v1/studies/{sid} after the run: {api}")
    finally:
        engine.dispose()
    return {"ok": totals["problems"] == 0, "problems": problems, "problem_count": totals["problems"], "ambiguous": ambiguous[:50],
            "trials": totals["trials"], "metric_rows": totals["metric_rows"], "epochs_written": totals["epochs_written"]}


# -- main --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, data_dir: Path, database_url: str) -> dict[str, Any]:
    duration = SMOKE_S if args.smoke else args.duration
    load_before = os.getloadavg()[0]
    print(f"store_load: {args.writers} writers, {args.read_rate:g} reads/s, {duration:g} s, {database_url.rpartition('@')[2]}", flush=True)
    server = server_for(data_dir, database_url, args.writers)
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    reports: list[dict[str, Any]] = []
    api_counts: dict[str, Any] = {}
    finished = False
    try:
        t = time.perf_counter()
        server.start()
        print(f"  caviar serve up in {time.perf_counter() - t:.1f} s at {server.url}", flush=True)
        ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        progress = ctx.Array("q", 2 * args.writers, lock=False)
        for i in range(args.writers):
            p = ctx.Process(target=writer, args=(i, server.url, database_url, duration, (args.interval_min_ms, args.interval_max_ms),
                                                 ready, go, results, progress), daemon=True)
            p.start()
            procs.append(p)
        setup_t = time.perf_counter()
        started: list[tuple[int, str, float, list[str]]] = []
        while len(started) < len(procs):
            try:
                started.append(ready.get(timeout=1))
            except queue.Empty:
                dead = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode is not None]
                if dead or time.perf_counter() - setup_t > 300:
                    raise RuntimeError(f"writers did not get ready (exited: {dead}); see the output above") from None
        setup_s = time.perf_counter() - setup_t
        study_ids = [s[1] for s in sorted(started)]
        imports = [s[2] for s in started]
        heavy = sorted({m for s in started for m in s[3]})
        print(f"  writers ready in {setup_s:.1f} s (imports of the store and the driver's StoreCallback: {min(imports):.1f}-{max(imports):.1f} s; "
              f"modules it pulled in: {', '.join(heavy) or 'none of torch/ray/optuna/numpy'})", flush=True)
        go.set()

        async def reads_with_progress() -> dict[str, Any]:
            task = asyncio.create_task(read_load(server.url, study_ids, args.read_rate, duration, args.max_in_flight))
            t0 = time.perf_counter()
            while not task.done():
                await asyncio.wait({task}, timeout=10)
                if not task.done():
                    ok, bad = sum(progress[0::2]), sum(progress[1::2])
                    print(f"  {time.perf_counter() - t0:5.0f} s: {ok} store calls ok, {bad} raised", flush=True)
            return task.result()

        reads = asyncio.run(reads_with_progress())
        deadline = time.time() + 120
        while len(reports) < len(procs) and time.time() < deadline:
            try:
                reports.append(results.get(timeout=1))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
        # the writers are done; the API may serve a study read up to MAX_STALE_S old (service/api/readcache.py):
        # past that, a read waits for a fresh one
        time.sleep(MAX_STALE_S + 0.5)
        with server.client() as client:
            for sid in study_ids:  # the API's view of the counts, for the consistency check
                try:
                    api_counts[sid] = client.study(sid)["trial_counts"]
                except Exception as exc:
                    api_counts[sid] = f"{type(exc).__name__}: {exc}"
        finished = True
    finally:
        for p in procs:
            p.join(timeout=10 if finished else 0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        server.stop()
    missing_writers = sorted(set(range(args.writers)) - {r["index"] for r in reports})

    wlat = [x for r in reports for x in r["latencies"]]
    werr: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in reports:
        for e in r["errors"]:
            key = (e["call"], e["type"], e["message"])
            if key in werr:
                werr[key]["count"] += e["count"]
            else:
                werr[key] = dict(e)
    writer_exceptions = sum(e["count"] for e in werr.values())
    calls = len(wlat)
    epochs_ok = sum(len(t["written"]) for r in reports for t in r["trials"].values())
    integ = integrity(database_url)
    cons = consistency(database_url, reports, api_counts)
    counts = reads["counts"]
    server_log = log_findings(server)
    locked = counts.get("locked", 0) + sum(e["count"] for e in werr.values() if LOCKED in e["message"].lower())
    failures = {
        "5xx": counts.get("5xx", 0),
        "database_is_locked": locked,
        "unexpected_status": counts.get("unexpected_status", 0),
        "transport_errors": counts.get("transport", 0),
        "writer_exceptions": writer_exceptions,
        "writers_without_report": len(missing_writers),
        "integrity": 0 if integ in (None, "ok") else 1,
        "consistency": cons["problem_count"],
    }
    warnings = []
    if reads["responses"] < 0.9 * args.read_rate * duration:
        warnings.append(f"reads fell short of the target: {reads['responses'] / reads['elapsed_s']:.1f}/s of {args.read_rate:g}/s "
                        f"({counts.get('skipped_saturated', 0)} skipped with {args.max_in_flight} in flight)")
    expected_calls = args.writers * duration / ((args.interval_min_ms + args.interval_max_ms) / 2000)
    if calls < 0.9 * expected_calls:
        warnings.append(f"writers fell behind their pace: {calls} store calls of ~{expected_calls:.0f}")
    if load_before > (os.cpu_count() or 1):  # (after the run the load average is mostly the run's own)
        warnings.append(f"the machine was busy before the run (1-min load average {load_before:.1f}, {os.cpu_count()} CPUs): "
                        "the figures are not a clean measurement")
    return {
        "database": "sqlite" if database_url.startswith("sqlite") else "postgresql",
        "duration_s": duration, "writers": args.writers, "read_rate_target": args.read_rate,
        "writer_interval_ms": [args.interval_min_ms, args.interval_max_ms], "cpus": os.cpu_count(),
        "study_creation": sorted({r["created_via"] for r in reports}),
        "writer_import_s": {"min": min(imports), "max": max(imports)}, "writer_heavy_modules": heavy,
        "writes": {"calls": calls, "per_s": calls / duration, "epochs": epochs_ok, "epochs_per_s": epochs_ok / duration,
                   "trials": sum(len(r["trials"]) for r in reports),
                   "latency_p50_ms": pct(wlat, 0.5) * 1000, "latency_p99_ms": pct(wlat, 0.99) * 1000,
                   "latency_max_ms": (max(wlat) if wlat else 0) * 1000},
        "writer_exceptions": sorted(werr.values(), key=lambda e: -e["count"]),
        "writer_store_retries": sum(r.get("store_retries", 0) for r in reports),
        "writer_store_retry_examples": sorted({m for r in reports for m in r.get("store_retry_examples", [])})[:5],
        "reads": {"responses": reads["responses"], "per_s": reads["responses"] / reads["elapsed_s"], "scheduled": reads["scheduled"],
                  "by_status": reads["by_status"], "by_endpoint": reads["by_endpoint"],
                  "latency_by_endpoint_ms": reads["latency_by_endpoint_ms"],
                  "latency_p50_ms": pct(reads["latencies"], 0.5) * 1000,
                  "latency_p99_ms": pct(reads["latencies"], 0.99) * 1000,
                  "latency_max_ms": (max(reads["latencies"]) if reads["latencies"] else 0) * 1000,
                  "counts": counts, "examples": reads["errors"]},
        "status_503_retry_after": counts.get("503_retry_after", 0),
        "integrity_check": integ, "consistency": cons, "server_log": server_log,
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "warnings": warnings, "failures": failures, "ok": not any(failures.values()),
    }


def print_table(res: dict[str, Any]) -> None:
    w, r, f = res["writes"], res["reads"], res["failures"]
    rows = [
        ("database", res["database"]),
        ("duration", f"{res['duration_s']:g} s ({res['writers']} writers, {res['cpus']} CPUs, "
                     f"load average {res['load_average_1m']['before']:.1f} before, {res['load_average_1m']['after']:.1f} after)"),
        ("writes/s achieved", f"{w['per_s']:.0f} store calls/s ({w['epochs_per_s']:.0f} epochs/s, {w['trials']} trials)"),
        ("write latency p50/p99/max", f"{w['latency_p50_ms']:.1f} / {w['latency_p99_ms']:.1f} / {w['latency_max_ms']:.0f} ms"),
        ("reads/s achieved", f"{r['per_s']:.1f} (target {res['read_rate_target']:g}; {r['counts'].get('skipped_saturated', 0)} skipped, saturated)"),
        ("read latency p50/p99", f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f} ms (max {r['latency_max_ms']:.0f} ms)"),
        ("read p50/p99 by endpoint", "; ".join(f"{k} {v['p50']:.0f}/{v['p99']:.0f} ms" for k, v in r["latency_by_endpoint_ms"].items())),
        ("responses by status", ", ".join(f"{k}: {v}" for k, v in sorted(r["by_status"].items()))),
        ("5xx", str(f["5xx"])),
        ('"database is locked"', str(f["database_is_locked"])),
        ("503 with Retry-After", str(res["status_503_retry_after"])),
        ("other HTTP/transport errors", f"{f['unexpected_status']} / {f['transport_errors']}"),
        ("writer exceptions", str(f["writer_exceptions"])),
        ("store retries (busy/locked)", f"{res['writer_store_retries']} in writers (retried, not errors)"),
        ("integrity_check", res["integrity_check"] or "n/a (PostgreSQL)"),
        ("consistency", "ok" if res["consistency"]["ok"] else f"{res['consistency']['problem_count']} problems"),
        ("server log", f"{res['server_log']['tracebacks']} tracebacks, {res['server_log']['locked_mentions']} 'locked' mentions, "
                       f"{res['server_log']['store_unavailable_lines']} 'store unavailable'"),
        ("result", "OK" if res["ok"] else "FAIL"),
    ]
    rows[-1:-1] = [("warning", w) for w in res["warnings"]]
    print()
    print(table(["store_load", ""], [list(row) for row in rows], left=2))
    for e in res["writer_exceptions"][:5]:
        print(f"\n  writer exception x{e['count']} in {e['call']}: {e['type']}: {e['message']}\n{e['traceback']}")
    for e in r["examples"][:5]:
        print(f"\n  read {e['kind']}: {e['detail'][:600]}")
    for p in res["consistency"]["problems"][:10]:
        print(f"  consistency: {p}")
    if res["server_log"]["first_traceback"] and not res["ok"]:
        print(f"\n  first server traceback:\n{res['server_log']['first_traceback'][:3000]}")


FAILURES = {  # what each count in res["failures"] asserts is zero
    "5xx": "no 5xx response (a 503 with Retry-After is allowed)",
    "database_is_locked": 'no "database is locked", in a response or a writer',
    "unexpected_status": "no other unexpected HTTP status",
    "transport_errors": "no transport error",
    "writer_exceptions": "no store call of a writer raised",
    "writers_without_report": "every writer reported",
    "integrity": "the database passes its integrity check",
    "consistency": "every write is stored once, as written, and the API's counts agree",
}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, f"{SMOKE_S:g} s", "store_load_<sqlite|postgresql>_<duration>s.json")
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    p.add_argument("--database-url", default=None,
                   help="default: SQLite in the temp data dir; a postgresql:// admin URL: a fresh caviar_bench_* database, dropped after")
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--read-rate", type=float, default=50.0, help="reads per second")
    p.add_argument("--interval-min-ms", type=float, default=20.0)
    p.add_argument("--interval-max-ms", type=float, default=50.0)
    p.add_argument("--max-in-flight", type=int, default=64, help="concurrent reads; a read due beyond it is skipped and counted")
    p.add_argument("--keep", action="store_true", help="keep the data dir (kept anyway on failure)")
    args = p.parse_args(argv)

    def _terminate(signum: int, _frame: Any) -> None:  # SIGTERM: clean up like Ctrl-C (server, writers, database)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    data_dir = Path(tempfile.mkdtemp(prefix="caviar-store-load-"))
    (data_dir / "datasets").mkdir()
    admin = args.database_url if args.database_url and args.database_url.startswith("postgresql") else None
    database_url = args.database_url or f"sqlite:///{data_dir / 'caviar.db'}"
    res: dict[str, Any] | None = None
    try:
        with postgres_database(admin) if admin else contextlib.nullcontext(database_url) as url:
            res = run(args, data_dir, url)
    finally:
        if res is not None and res["ok"] and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"\n  data dir kept: {data_dir}")
    assert res is not None
    print_table(res)
    checks = Checks("store_load")
    for key, what in FAILURES.items():
        checks.check(res["failures"][key] == 0, f"{what} ({key}: {res['failures'][key]})")
    res["checks"] = checks.as_dict()
    default = None if args.smoke else f"store_load_{res['database']}_{res['duration_s']:g}s"
    write_json(args.json or (DOCS_BENCH / f"{default}.json" if default else None), res)
    return checks.exit_code()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("store_load: interrupted", file=sys.stderr)
        sys.exit(130)
