"""API under load: GET /v1/studies/{id} and GET /v1/studies/{id}/trials (polled, served through the
read cache) and three uncached reads (the listing, a big study's best, a trial with its history) while a
study runs, in a store of 1,000 studies one of which has 10,000 trials, against a minimal FastAPI JSON
endpoint served the same way in the same run.

What runs (all started here on loopback and free ports, and stopped at the end; only these):
  ray head  - service.local.LocalHead (token auth, a temp dir of its own) with --num-cpus 1 (see
              "Fairness" below)
  caviar    - service.local.LocalServer: `caviar serve` against that head on a fresh data directory
              (SQLite): uvicorn, one process (--api-workers N: `--workers N`, N processes on the port,
              their CPU summed), log level info (access log on), as users run it
  minimal   - a FastAPI app with one `GET /ping` -> {"status": "ok"} (an `async def`), served by the
              same service.api.server.run_server (same uvicorn.Config: one process, log level info)
              in a subprocess: the baseline
  study     - `busy_work` (spins the CPU seconds_per_epoch per epoch, no data), search space x, y in
              [0, 1], TPE, no early stopping, one trial at a time, 20 epochs x 0.1 s, enough trials to
              outlast the load (at least 40); the load starts once 3 trials have metrics, and the study
              is cancelled at the end (it still runs: the run says so, or warns)
  store     - before the study: --studies studies (default 1,000) written straight into the server's
              store (service.store.synthetic), one of --big-trials trials (default 10,000) of up to 20
              epochs, ASHA-shaped (about 47,000 epoch rows), the rest of 3 trials each
  endpoints - the minimal GET /ping; GET /v1/studies/{id} and .../trials of the running study (cached:
              what UIs and `caviar wait` poll), driven with --connections (32);
              GET /v1/studies?limit=50 (the newest page, with each study's counts and best), GET
              .../best?k=10 of the big study, GET .../trials/{tid} of the big study (one trial with its
              20-epoch history), and the listing as the UI asks for it (view=summary: no definitions):
              these read the store on every request; driven with
              --uncached-connections (4: people and scripts reading, not pollers; at 32 connections
              on one server core a request's latency is mostly the 31 ahead of it)
  load      - per endpoint, interleaved in rounds (ping, study, trials, ping, ...) so drift on a shared
              machine hits all three alike; each endpoint gets --duration seconds in all. Two generators:
              wrk   -t2 -c32 --latency (full runs, when wrk is on PATH). A Lua done() hook dumps wrk's
                    latency histogram, so the rounds' percentiles are merged exactly (computed as wrk
                    computes them), with wrk's correction for coordinated omission (so it holds more
                    samples than requests); each round's printed percentiles are kept beside ours in
                    the JSON as a check.
              python asyncio + httpx.AsyncClient, one closed loop per connection (--smoke, or wrk not
                    on PATH): no coordinated-omission correction, latency includes the client's own
                    Python time, bytes are response bodies; the generator shares the machine's CPUs.
              The JSON records which one ran ("generator").
Also reported: each server's CPU use (cores busy during its load, and CPU ms per request, which
contention moves less than req/s) and the whole machine's CPU use.

Before the load, the read cache is checked over HTTP: pairs of GET .../trials 0.15 s apart, with the
store read directly between them. The trial list shows each trial's epochs, which only grow; when
the store gained epochs between the two requests and still the second body is byte-identical to the
first, the second was served from memory. Without the cache no such pair can occur.

Fairness on a small machine: the trial spins one core all the time; the API server (one Python
process), the load generator and Ray's own processes (GCS, raylet, dashboard, the study's Tune
driver writing each epoch to the store) share the rest. The minimal endpoint is measured under the
same conditions, in the same rounds.

Goals: p99 at most 20 ms for every Caviar endpoint, at least 0.5x the minimal endpoint's req/s for the
two cached ones, zero errors. Exit 1 on any error (socket errors or timeouts, non-2xx responses, a server or the study
that does not come up); a missed goal is reported (and exits 1 only with --check-goals). --smoke
also asserts that the read cache served a changed study from memory.

    python -m bench.api_load                  # 32 connections, 30 s per endpoint (3 rounds of 10 s)
    python -m bench.api_load --smoke          # 8 connections, 3 s per endpoint, Python generator, a tiny study
    python -m bench.api_load --json out.json  # the numbers, per endpoint and per round
    python -m bench.api_load --token          # requests carry a bearer token (the auth lookup path)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench._common import Checks, cluster, json_path, machine_cpu, parser, submit, table, write_json
from service.client import CaviarError
from service.local import free_port, wait_until
from service.store.models import LOCAL_OWNER

HZ = os.sysconf("SC_CLK_TCK")
GOAL_P99_MS = 20.0
GOAL_RATIO = 0.5

# wrk calls done() once, in its main Lua state, after all threads stopped: dump the summary and the
# latency histogram (latency(i) is the i-th distinct value in microseconds and its count)
WRK_LUA = r"""
done = function(summary, latency, requests)
  local f = assert(io.open(os.getenv("API_LOAD_WRK_OUT"), "w"))
  local e = summary.errors
  f:write(string.format('{"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, "hist": [',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout))
  for i = 1, #latency do
    local v, c = latency(i)
    if i > 1 then f:write(",") end
    f:write(string.format("[%d,%d]", v, c))
  end
  f:write("]}")
  f:close()
end
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its live descendants (`caviar serve
    --workers N`'s workers), in seconds."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / HZ
    return total


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


# -- the minimal baseline app (run in a subprocess: `python -m bench.api_load --serve-minimal PORT`) ----


def serve_minimal(port: int) -> None:
    from fastapi import FastAPI

    from service.api.server import run_server  # exactly how `caviar serve` runs its app

    app = FastAPI(title="minimal")

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    run_server(app, "127.0.0.1", port, float(os.environ.get("CAVIAR_DRAIN_S", "0")))


class Minimal:
    """The baseline server in a subprocess of its own session; stop() signals only it."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/ping"
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bench.api_load", "--serve-minimal", str(self.port)],
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_up(self, timeout: float) -> None:
        import httpx

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the minimal server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                return httpx.get(self.url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout, "the minimal server", interval=0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- load generators -----------------------------------------------------------------------------------


def percentile(hist: list[tuple[int, int]], p: float) -> int:
    """As wrk's stats_percentile: the smallest value whose cumulative count reaches round(p% * n + 0.5)."""
    n = sum(c for _, c in hist)
    if n == 0:
        return 0
    rank = math.floor(p / 100 * n + 0.5 + 0.5)  # C round() of x + 0.5, x >= 0
    total = 0
    for v, c in hist:
        total += c
        if total >= rank:
            return v
    return hist[-1][0]


def run_wrk(wrk: str, lua: Path, url: str, connections: int, threads: int, seconds: int, headers: dict[str, str],
            out: Path) -> dict[str, Any]:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", "--latency", "-s", str(lua)]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url)
    out.unlink(missing_ok=True)
    r = subprocess.run(cmd, env={**os.environ, "API_LOAD_WRK_OUT": str(out)}, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    data["hist"] = [(int(v), int(c)) for v, c in data["hist"]]
    data["stdout"] = r.stdout
    # wrk's own "Non-2xx or 3xx responses" line; its Lua summary counts only status > 399
    non2xx = 0
    for line in r.stdout.splitlines():
        if line.strip().startswith("Non-2xx or 3xx responses:"):
            non2xx = int(line.split(":")[1])
    data["non_2xx"] = max(non2xx, data["errors"]["status"])
    data["wrk_printed_ms"] = printed_percentiles(r.stdout)  # a cross-check of the histogram's percentiles
    return data


def printed_percentiles(stdout: str) -> dict[str, float]:
    """wrk --latency's "Latency Distribution" lines ("     99%   12.34ms"), in ms."""
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
    out = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"\s*(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*", line)
        if m:
            out[f"p{m[1]}"] = float(m[2]) * scale[m[3]]
    return out


def run_python(url: str, connections: int, seconds: float, headers: dict[str, str]) -> dict[str, Any]:
    """The built-in generator: ``connections`` closed loops (send, await the answer, send again) on
    one asyncio loop for ``seconds``; the same summary fields as run_wrk's (latency histogram in
    microseconds, error counts by kind)."""
    import httpx

    hist: Counter[int] = Counter()
    errors = dict.fromkeys(("connect", "read", "write", "status", "timeout"), 0)
    totals = {"requests": 0, "bytes": 0, "non_2xx": 0}

    async def load() -> float:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(timeout=2.0, limits=limits, headers=headers) as client:
            start = time.perf_counter()
            deadline = start + seconds

            async def loop() -> None:
                while time.perf_counter() < deadline:
                    t = time.perf_counter()
                    try:
                        r = await client.get(url)
                    except httpx.TimeoutException:
                        errors["timeout"] += 1
                        continue
                    except httpx.ConnectError:
                        errors["connect"] += 1
                        continue
                    except httpx.WriteError:
                        errors["write"] += 1
                        continue
                    except httpx.HTTPError:
                        errors["read"] += 1
                        continue
                    hist[max(1, round((time.perf_counter() - t) * 1e6))] += 1
                    totals["requests"] += 1
                    totals["bytes"] += len(r.content)
                    if not 200 <= r.status_code < 300:
                        totals["non_2xx"] += 1
                        errors["status"] += r.status_code > 399

            await asyncio.gather(*(loop() for _ in range(connections)))
            return time.perf_counter() - start

    duration = asyncio.run(load())
    return {"requests": totals["requests"], "duration_us": int(duration * 1e6), "bytes": totals["bytes"], "errors": errors,
            "hist": sorted(hist.items()), "non_2xx": totals["non_2xx"], "wrk_printed_ms": {}}


def read_cache_check(http: Any, store: Any, study_id: str, pairs: int = 20, gap_s: float = 0.15) -> dict[str, int]:
    """Pairs of GET .../trials ``gap_s`` apart with the store's epoch total read between them (see the
    module docstring): how many pairs saw the store change, and how many of those got the same bytes."""
    url = f"/v1/studies/{study_id}/trials"

    def epochs() -> int:
        return sum(t.epochs or 0 for t in store.trials.for_study(study_id))

    changed = cached = 0
    for _ in range(pairs):
        first = http.get(url)
        before = epochs()
        time.sleep(gap_s)
        after = epochs()
        second = http.get(url)
        if first.status_code != 200 or second.status_code != 200:
            raise RuntimeError(f"GET {url}: {first.status_code}, {second.status_code}")
        if after > before:
            changed += 1
            cached += first.content == second.content
        time.sleep(gap_s)
    return {"pairs": pairs, "store_changed": changed, "served_from_memory": cached}


def summarize(runs: list[dict[str, Any]], cpu_s: float, wall_s: float) -> dict[str, Any]:
    hist_map: dict[int, int] = {}
    for r in runs:
        for v, c in r["hist"]:
            hist_map[v] = hist_map.get(v, 0) + c
    hist = sorted(hist_map.items())
    requests = sum(r["requests"] for r in runs)
    duration = sum(r["duration_us"] for r in runs) / 1e6
    n_lat = sum(c for _, c in hist)
    errors = {k: sum(r["errors"][k] for r in runs) for k in ("connect", "read", "write", "timeout")}
    non2xx = sum(r["non_2xx"] for r in runs)
    return {
        "requests": requests, "duration_s": round(duration, 3), "req_per_s": round(requests / duration, 1) if duration else 0.0,
        "latency_ms": {
            "p50": percentile(hist, 50) / 1000, "p90": percentile(hist, 90) / 1000, "p99": percentile(hist, 99) / 1000,
            "p99.9": percentile(hist, 99.9) / 1000, "max": (hist[-1][0] / 1000) if hist else 0.0,
            "mean": round(sum(v * c for v, c in hist) / n_lat / 1000, 3) if n_lat else 0.0,
        },
        "socket_errors": errors, "non_2xx": non2xx, "errors_total": sum(errors.values()) + non2xx,
        "bytes_per_response": round(sum(r["bytes"] for r in runs) / requests) if requests else 0,
        "server_cpu_cores": round(cpu_s / wall_s, 2) if wall_s else 0.0,
        "server_cpu_ms_per_request": round(1000 * cpu_s / requests, 3) if requests else None,
        "rounds": [{"requests": r["requests"], "req_per_s": round(r["requests"] / (r["duration_us"] / 1e6), 1),
                    "p50_ms": percentile(r["hist"], 50) / 1000, "p99_ms": percentile(r["hist"], 99) / 1000,
                    "wrk_printed_ms": r["wrk_printed_ms"], "errors": r["errors"], "non_2xx": r["non_2xx"], "study": r.get("study")}
                   for r in runs],
    }


# -- the benchmark -----------------------------------------------------------------------------------


UNCACHED = ("GET /v1/studies?limit=50", "GET .../best?k=10 (big study)", "GET .../trials/{tid} (history)",
            "GET /v1/studies?limit=50&view=summary")
BIG_EPOCHS = 20


def fill_store(store: Any, studies: int, big_trials: int, owner: str) -> tuple[str, str]:
    """The store the uncached reads run against: ``studies`` studies in all, one of them with
    ``big_trials`` trials of up to BIG_EPOCHS epochs each (ASHA-shaped), the rest of 3 trials; written
    straight into the store as drivers would have left them (service.store.synthetic). The big
    study's id and one of its trials that ran every epoch."""
    from service.store.synthetic import synthetic_study

    def definition(name: str, trials: int) -> dict[str, Any]:
        return {"name": name, "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"}, "search_space": "seven_key",
                "fixed": {"epochs": BIG_EPOCHS}, "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 3},
                "budget": {"num_trials": trials, "max_concurrent_trials": 8}}

    for i in range(studies - 1):
        synthetic_study(store, definition(f"filler-{i}", 3), 3, seed=i, owner=owner)
    big = synthetic_study(store, definition("big", big_trials), big_trials, seed=1, owner=owner)
    full = [t for t in store.trials.for_study(big) if t.epochs == BIG_EPOCHS]
    if not full:
        raise RuntimeError(f"the big study's {big_trials} trials have none that ran all {BIG_EPOCHS} epochs: raise --big-trials")
    return big, full[0].trial_id


def study_definition(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "api-load",
        "trainable": "busy_work",
        "dataset": {"name": "digits"},  # required by the schema; busy_work reads no data
        "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0}, "y": {"type": "float", "low": 0.0, "high": 1.0}},
        "fixed": {"epochs": args.epochs, "seconds_per_epoch": args.seconds_per_epoch},
        "objective": {"metric": "val_accuracy", "mode": "max"},
        "sampler": {"type": "tpe", "seed": 0},
        "scheduler": {"type": "none"},
        "budget": {"num_trials": args.trials, "max_concurrent_trials": 1, "max_failures": 0},
        "resources_per_trial": {"cpu": 1, "gpu": 0},
    }


def run(args: argparse.Namespace, wrk: str | None, work: Path) -> dict[str, Any]:
    from service.store import Store

    lua = work / "dump.lua"
    lua.write_text(WRK_LUA)
    minimal = Minimal(work / "minimal.log")  # starts while the Ray head does
    result: dict[str, Any] = {}
    t_setup = time.monotonic()
    try:
        with cluster(work, num_cpus=args.ray_cpus, server_env={"PYTHONUNBUFFERED": "1", "CAVIAR_API_WORKERS": str(args.api_workers)}) as (head, server):
            assert server is not None and server.proc is not None and head.proc is not None
            store = Store(str(server.database_url))
            token = store.tokens.create("bench")[1] if args.token else None
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            t_fill = time.monotonic()
            big_id, big_trial = fill_store(store, args.studies, args.big_trials, owner="bench" if token else LOCAL_OWNER)
            print(f"  store filled in {time.monotonic() - t_fill:.1f} s: {args.studies} studies, one of {args.big_trials} trials "
                  f"x {BIG_EPOCHS} epochs", flush=True)
            minimal.wait_up(60)
            print(f"  servers up in {time.monotonic() - t_setup:.1f} s (caviar {server.url}, minimal {minimal.url}, "
                  f"Ray dashboard {head.dashboard})", flush=True)
            with server.client(token) as client:
                study_id = submit(client, study_definition(args))
                t_study = time.monotonic()
                deadline = t_study + args.study_timeout
                while True:
                    measured = sum(1 for t in client.trials(study_id) if t["epochs"] > 0)
                    if measured >= args.warm_trials:
                        break
                    status = client.study(study_id)["status"]
                    if status in ("completed", "failed", "cancelled") or time.monotonic() > deadline or head.proc.poll() is not None:
                        raise RuntimeError(f"study {study_id} is {status} with {measured} trials measured after "
                                           f"{time.monotonic() - t_study:.0f} s; {server.log_path}:\n{server.log_path.read_text()[-3000:]}")
                    time.sleep(0.5)
                print(f"  study {study_id} running: {measured} trials with metrics after {time.monotonic() - t_study:.1f} s", flush=True)

                endpoints = {
                    "minimal GET /ping": (minimal.proc.pid, minimal.url),
                    "GET /v1/studies/{id}": (server.proc.pid, f"{server.url}/v1/studies/{study_id}"),
                    "GET /v1/studies/{id}/trials": (server.proc.pid, f"{server.url}/v1/studies/{study_id}/trials"),
                    # uncached: each request reads the store
                    UNCACHED[0]: (server.proc.pid, f"{server.url}/v1/studies?limit=50"),
                    UNCACHED[1]: (server.proc.pid, f"{server.url}/v1/studies/{big_id}/best?k=10"),
                    UNCACHED[2]: (server.proc.pid, f"{server.url}/v1/studies/{big_id}/trials/{big_trial}"),
                    UNCACHED[3]: (server.proc.pid, f"{server.url}/v1/studies?limit=50&view=summary"),  # what the UI's list asks
                }
                for name, (_, url) in endpoints.items():  # each answers 200 with JSON before it is loaded
                    resp = client.http.get(url)
                    if resp.status_code != 200 or not resp.headers.get("content-type", "").startswith("application/json"):
                        raise RuntimeError(f"{name}: {resp.status_code} {resp.headers.get('content-type')}: {resp.text[:500]}")
                result["_read_cache"] = read_cache_check(client.http, store, study_id)
                store.db.dispose()
                print(f"  read cache: {result['_read_cache']['served_from_memory']} of {result['_read_cache']['store_changed']} "
                      f"GET .../trials pairs around a store change got the same bytes (served from memory)", flush=True)

                def conns(name: str) -> int:  # the uncached reads at a user's concurrency, the polled ones at the full load
                    return args.uncached_connections if name in UNCACHED else args.connections

                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in endpoints}
                cpu: dict[str, float] = dict.fromkeys(endpoints, 0.0)
                wall: dict[str, float] = dict.fromkeys(endpoints, 0.0)
                machine = [0.0, 0.0]
                seconds = max(1, round(args.duration / args.rounds))
                for rnd in range(args.rounds):
                    for name, (pid, url) in endpoints.items():
                        c0, m0, w0 = cpu_seconds(pid), machine_cpu(), time.monotonic()
                        if wrk:
                            out = run_wrk(wrk, lua, url, conns(name), min(args.threads, conns(name)), seconds, headers, work / "wrk.json")
                        else:
                            out = run_python(url, conns(name), seconds, headers)
                        c1, m1, w1 = cpu_seconds(pid), machine_cpu(), time.monotonic()
                        cpu[name] += c1 - c0
                        wall[name] += w1 - w0
                        machine[0] += m1[0] - m0[0]
                        machine[1] += m1[1] - m0[1]
                        s = client.study(study_id)
                        out["study"] = {"status": s["status"], "trials": sum(s["trial_counts"].values()), "trial_counts": s["trial_counts"]}
                        runs[name].append(out)
                        e = out["errors"]
                        print(f"  round {rnd + 1}/{args.rounds} {name:<28} {out['requests'] / (out['duration_us'] / 1e6):8.0f} req/s  "
                              f"p50 {percentile(out['hist'], 50) / 1000:6.1f} ms  p99 {percentile(out['hist'], 99) / 1000:6.1f} ms  "
                              f"errors {e['connect'] + e['read'] + e['write'] + e['timeout'] + out['non_2xx']}  "
                              f"(study {s['status']}, {out['study']['trials']} trials)", flush=True)
                for name in endpoints:
                    result[name] = summarize(runs[name], cpu[name], wall[name])
                result["_machine_cpu_busy"] = round(machine[0] / machine[1], 3) if machine[1] else None
                final = client.study(study_id)
                result["_study"] = {"id": study_id, "status_after": final["status"], "trial_counts_after": final["trial_counts"],
                                    "running_throughout": all(r["study"]["status"] == "running" for rs in runs.values() for r in rs)}
                if final["status"] in ("queued", "running"):
                    try:
                        client.cancel(study_id)
                    except CaviarError as exc:
                        print(f"  warning: cancelling study {study_id}: {exc}", file=sys.stderr)
                t_stop = time.monotonic()
    finally:
        minimal.stop()
    print(f"  stopped what it started in {time.monotonic() - t_stop:.1f} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "8 connections, 5 s per endpoint in one round, the Python generator, a tiny study", "api_load.json")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per endpoint, split over --rounds")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (ping, study, trials) per endpoint")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                    help="auto: wrk for a full run when it is on PATH, else (and for --smoke) the built-in Python one")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--trials", type=int, default=0, help="num_trials of the study (default: enough to outlast the load, at least 40)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seconds-per-epoch", type=float, default=0.1)
    ap.add_argument("--warm-trials", type=int, default=3, help="trials with metrics before the load starts")
    ap.add_argument("--ray-cpus", type=int, default=1, help="--num-cpus of the Ray head (one trial spins one core)")
    ap.add_argument("--study-timeout", type=float, default=240.0, help="seconds for the study to get --warm-trials measured")
    ap.add_argument("--uncached-connections", type=int, default=4,
                    help="connections for the uncached reads (the listing, best, a trial's history): people and scripts, not pollers")
    ap.add_argument("--studies", type=int, default=1000, help="studies in the store before the load (the listing's)")
    ap.add_argument("--big-trials", type=int, default=10_000, help="trials of the big study (best, trial detail)")
    ap.add_argument("--api-workers", type=int, default=1, help="`caviar serve --workers N`: API processes on the port (CPU is summed over them)")
    ap.add_argument("--token", action="store_true", help="send a bearer token (created in the server's store)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, SQLite file)")
    ap.add_argument("--check-goals", action="store_true", help="exit 1 when a goal is missed, too")
    ap.add_argument("--serve-minimal", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_minimal:
        serve_minimal(args.serve_minimal)
        return 0
    if args.smoke:
        args.duration, args.rounds, args.connections, args.uncached_connections = 3.0, 1, 8, 2
        args.epochs, args.warm_trials = 5, 1
        args.studies, args.big_trials = min(args.studies, 60), min(args.big_trials, 2000)
    if not args.trials:  # one trial at a time, each at least epochs x seconds_per_epoch: twice the load's length
        load_s = 6 * args.duration + 6 * args.rounds * 2.0  # six endpoints
        args.trials = max(40, math.ceil(2 * load_s / max(args.epochs * args.seconds_per_epoch, 0.05)))
    wrk = shutil.which("wrk") if args.generator == "wrk" or (args.generator == "auto" and not args.smoke) else None
    if args.generator == "wrk" and wrk is None:
        print("error: wrk is not on PATH; install it (Debian/Ubuntu: `apt-get install -y wrk`; macOS: `brew install wrk`)", file=sys.stderr)
        return 1
    if args.generator == "auto" and not args.smoke and wrk is None:
        print("note: wrk is not on PATH: the built-in Python generator drives the load (its figures are not wrk's; "
              "install wrk for the published ones)", flush=True)
    generator = "wrk" if wrk else "python"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up what we started on SIGTERM too
    load = os.getloadavg()
    print(f"api_load: {args.connections} connections ({generator}{f', {args.threads} threads' if wrk else ''}), {args.duration:g} s "
          f"per endpoint in {args.rounds} round(s); study busy_work {args.trials} trials x {args.epochs} epochs x "
          f"{args.seconds_per_epoch:g} s, one at a time; {args.api_workers} API process(es); {os.cpu_count()} CPUs, load average {load[0]:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="caviar-api-load-"))
    try:
        res = run(args, wrk, work)
    except (RuntimeError, TimeoutError, CaviarError) as exc:
        print(f"error: {exc}\nlogs kept in {work}", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    names = [k for k in res if not k.startswith("_")]
    base = res[names[0]]["req_per_s"]
    rows = []
    for name in names:
        r = res[name]
        r["ratio_to_minimal"] = round(r["req_per_s"] / base, 3) if base else None
        # CPU per request moves less than req/s when other work takes the CPU away from the servers
        mine, theirs = r["server_cpu_ms_per_request"], res[names[0]]["server_cpu_ms_per_request"]
        r["cpu_per_request_vs_minimal"] = round(mine / theirs, 2) if mine and theirs else None
        lat = r["latency_ms"]
        rows.append([name, f"{r['req_per_s']:.0f}", f"{r['ratio_to_minimal'] or 0:.2f}", f"{lat['p50']:.1f}", f"{lat['p90']:.1f}",
                     f"{lat['p99']:.1f}", f"{lat['p99.9']:.1f}", f"{lat['max']:.1f}", r["errors_total"], r["bytes_per_response"],
                     f"{r['server_cpu_cores']:.2f}", f"{r['server_cpu_ms_per_request'] or 0:.3f}"])
    print()
    print(table(["endpoint", "req/s", "x min", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms", "errors", "bytes", "srv cores", "CPU ms/req"], rows))
    study = res["_study"]
    print(f"load generator: {generator}; machine CPU busy during the load: {100 * (res['_machine_cpu_busy'] or 0):.0f}% of "
          f"{os.cpu_count()} CPUs; study {study['id']} {'running throughout' if study['running_throughout'] else 'NOT running throughout'}, "
          f"{sum(study['trial_counts_after'].values())} trials at the end ({study['status_after']})")
    goals = {}
    for name in names[1:]:
        r = res[name]
        cached = name not in UNCACHED  # the req/s goal is the polled (cached) reads'; p99 is every read's
        goals[name] = {"p99_ms": r["latency_ms"]["p99"], "p99_ok": r["latency_ms"]["p99"] <= GOAL_P99_MS,
                       "ratio": r["ratio_to_minimal"], "ratio_ok": (r["ratio_to_minimal"] or 0) >= GOAL_RATIO or not cached}
        ratio = (f"{r['ratio_to_minimal']:.2f}x the minimal req/s (>= {GOAL_RATIO:g}x: {'met' if goals[name]['ratio_ok'] else 'MISSED'})"
                 if cached else f"{r['ratio_to_minimal']:.2f}x the minimal req/s (uncached: no req/s goal)")
        print(f"goal {name}: p99 {r['latency_ms']['p99']:.1f} ms (<= {GOAL_P99_MS:g}: {'met' if goals[name]['p99_ok'] else 'MISSED'}), "
              f"{ratio}; server CPU per request {r['cpu_per_request_vs_minimal']}x the minimal's")
    if not study["running_throughout"]:
        print("warning: the study was not running during every round; raise --trials or --epochs", file=sys.stderr)
    errors = sum(res[n]["errors_total"] for n in names)
    cache = res["_read_cache"]
    checks = Checks("api_load")
    checks.check(errors == 0, f"no errors: {errors}" + ("" if errors == 0 else " (" + "; ".join(
        f"{n}: {res[n]['socket_errors']}, non-2xx {res[n]['non_2xx']}" for n in names if res[n]["errors_total"]) + ")"))
    if args.smoke:
        checks.check(cache["served_from_memory"] >= 1,
                     f"the read cache is on: {cache['served_from_memory']} of {cache['store_changed']} GET .../trials pairs around a "
                     "store change got byte-identical bodies (none can without the cache)")
    write_json(json_path(args, "api_load"), {
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "serve_minimal")}, "generator": generator,
        "cpus": os.cpu_count(), "load_average_before": load, "load_average_after": os.getloadavg(),
        "machine_cpu_busy": res["_machine_cpu_busy"], "study": study, "read_cache": cache,
        "results": {n: res[n] for n in names}, "goals": goals, "errors": errors, "checks": checks.as_dict(),
    })
    missed = not all(g["p99_ok"] and g["ratio_ok"] for g in goals.values())
    return checks.exit_code() or (1 if args.check_goals and missed else 0)


if __name__ == "__main__":
    sys.exit(main())
