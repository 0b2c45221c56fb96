"""API under load: GET /v1/studies/{id} and GET /v1/studies/{id}/trials while a study runs, with wrk,
against a minimal FastAPI JSON endpoint served the same way in the same run.

What runs (all started here on loopback and free ports, and stopped at the end; only these):
  ray head  - `ray start --head --block` with token auth, as tests/conftest.py's HeadProcess does,
              with --num-cpus 1 (see "Fairness" below)
  caviar    - `caviar serve --ray-address <that head>` on a fresh CAVIAR_DATA_DIR (SQLite): uvicorn,
              one process, log level info (access log on), as users run it
  minimal   - a FastAPI app with one `GET /ping` -> {"status": "ok"} (an `async def`), served by the
              same service.cli._run_server (same uvicorn.Config: one process, log level info) in a
              subprocess: the baseline
  study     - `busy_work` (spins the CPU seconds_per_epoch per epoch, no data), search space x, y in
              [0, 1], TPE, no early stopping, one trial at a time, 20 epochs x 0.1 s, enough trials to
              outlast the load (at least 40); the load starts once 3 trials have metrics, and the study
              is cancelled at the end (it still runs: the run says so, or warns)
  load      - wrk -t2 -c32 --latency per endpoint, interleaved in rounds (ping, study, trials, ping,
              ...) so drift on a shared machine hits all three alike; each endpoint gets --duration
              seconds in all. A Lua done() hook dumps wrk's latency histogram, so the rounds'
              percentiles are merged exactly (computed as wrk computes them). The histogram is the one
              `wrk --latency` prints from, with wrk's correction for coordinated omission (stats_correct
              adds the samples a stalled connection did not send), so it holds more samples than
              requests; each round's printed percentiles are kept beside ours in --json as a check.
Also reported: each server's CPU use (cores busy during its load, and CPU ms per request, which
contention moves less than req/s) and the whole machine's CPU use.

Fairness on a small machine: the trial spins one core all the time; the API server (one Python
process), wrk and Ray's own processes (GCS, raylet, dashboard, the study's Tune driver writing each
epoch to the store) share the rest. The minimal endpoint is measured under the same conditions, in
the same rounds.

Goals: p99 at most 20 ms for both Caviar endpoints, at least 0.5x the minimal endpoint's req/s, zero
errors. Exit 1 on any error (wrk socket errors or timeouts, non-2xx responses, a server or the
study that does not come up); a missed goal is reported (and exits 1 only with --check-goals).

    python -m bench.api_load                  # 32 connections, 30 s per endpoint (3 rounds of 10 s)
    python -m bench.api_load --smoke          # 8 connections, 5 s per endpoint, a tiny study
    python -m bench.api_load --json out.json  # the numbers, per endpoint and per round
    python -m bench.api_load --token          # requests carry a bearer token (the auth lookup path)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench._cluster import free_port, ray_temp_dir

BIN = Path(sys.executable).parent
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
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


# -- the minimal baseline app (run in a subprocess: `python -m bench.api_load --serve-minimal PORT`) ----


def serve_minimal(port: int) -> None:
    from fastapi import FastAPI

    from service.cli import _run_server  # exactly how `caviar serve` runs its app

    app = FastAPI(title="minimal")

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    _run_server(app, "127.0.0.1", port, float(os.environ.get("CAVIAR_DRAIN_S", "2")))


# -- processes ---------------------------------------------------------------------------------------


class Proc:
    """A subprocess in its own session, output to a log file; stop() signals only it (then its group)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.log_path = name, log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.log.close()


def wait_http(client: Any, url: str, procs: list[Proc], timeout: float, what: str, headers: dict[str, str] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get(url, timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        dead = [p for p in procs if not p.alive()]
        if dead or time.monotonic() > deadline:
            p = dead[0] if dead else procs[0]
            raise RuntimeError(f"{what} did not come up within {timeout:g} s ({p.name} {'exited' if dead else 'running'}); "
                               f"{p.log_path}:\n{p.tail()}")
        time.sleep(0.3)


# -- wrk ---------------------------------------------------------------------------------------------


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
    data = json.loads(out.read_text())
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


def run(args: argparse.Namespace, wrk: str, work: Path) -> dict[str, Any]:
    import httpx

    client = httpx.Client(timeout=30)
    data_dir = work / "data"
    (data_dir / "datasets").mkdir(parents=True)
    lua = work / "dump.lua"
    lua.write_text(WRK_LUA)
    ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(16),
               "RAY_USAGE_STATS_ENABLED": "0"}
    env = {**os.environ, **ray_env, "CAVIAR_DATA_DIR": str(data_dir), "CAVIAR_DRAIN_S": "0.5", "PYTHONUNBUFFERED": "1"}
    env.pop("CAVIAR_DATABASE_URL", None)  # a fresh SQLite file in the fresh data dir
    headers: dict[str, str] = {}
    if args.token:
        r = subprocess.run([str(BIN / "caviar"), "token", "create", "--owner", "bench"], env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"caviar token create failed: {r.stderr[-2000:]}")
        headers["Authorization"] = f"Bearer {r.stdout.strip().splitlines()[-1]}"

    gcs, dash, agent, grpc, metrics, client_port = (free_port() for _ in range(6))
    api_port, ping_port = free_port(), free_port()
    api, base = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ping_port}"
    procs: list[Proc] = []
    result: dict[str, Any] = {}
    study_id: str | None = None
    t_setup = time.monotonic()
    try:
        # all three start at once; `caviar serve` does not need Ray to come up (its dispatcher retries)
        procs.append(Proc("ray head", [
            str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", f"--num-cpus={args.ray_cpus}",
            "--disable-usage-stats", f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
            f"--metrics-export-port={metrics}", f"--ray-client-server-port={client_port}",
            f"--temp-dir={ray_temp_dir()}"], env, work / "ray-head.log"))
        procs.append(Proc("caviar serve", [str(BIN / "caviar"), "serve", "--port", str(api_port), "--ray-address", f"http://127.0.0.1:{dash}"],
                          env, work / "caviar-serve.log"))
        procs.append(Proc("minimal", [sys.executable, "-m", "bench.api_load", "--serve-minimal", str(ping_port)], env, work / "minimal.log"))
        head, server, minimal = procs
        wait_http(client, f"{base}/ping", [minimal], 60, "the minimal server")
        wait_http(client, f"{api}/healthz", [server], 60, "caviar serve")
        wait_http(client, f"{api}/readyz", [server, head], 120, "the Ray head (caviar's /readyz)", headers)
        print(f"  servers up in {time.monotonic() - t_setup:.1f} s (caviar {api}, minimal {base}, Ray dashboard :{dash})", flush=True)

        while True:  # the dashboard answers before the head node has registered its CPUs (422 "the cluster has 0")
            r = client.post(f"{api}/v1/studies", json=study_definition(args), headers=headers)
            if r.status_code == 201 or r.status_code != 422 or "cluster has 0" not in r.text or time.monotonic() - t_setup > 120:
                break
            time.sleep(0.5)
        if r.status_code != 201:
            raise RuntimeError(f"POST /v1/studies -> {r.status_code}: {r.text[:1000]}")
        study_id = r.json()["id"]
        t_study = time.monotonic()
        deadline = t_study + args.study_timeout
        while True:
            trials = client.get(f"{api}/v1/studies/{study_id}/trials", headers=headers).json()
            status = client.get(f"{api}/v1/studies/{study_id}", headers=headers).json()["status"]
            measured = sum(1 for t in trials if t["epochs"] > 0)
            if measured >= args.warm_trials:
                break
            if status in ("completed", "failed", "cancelled") or time.monotonic() > deadline or not head.alive():
                raise RuntimeError(f"study {study_id} is {status} with {measured} trials measured after "
                                   f"{time.monotonic() - t_study:.0f} s; {server.log_path}:\n{server.tail()}")
            time.sleep(0.5)
        print(f"  study {study_id} running: {measured} trials with metrics after {time.monotonic() - t_study:.1f} s", flush=True)

        endpoints = {
            "minimal GET /ping": (minimal, f"{base}/ping"),
            "GET /v1/studies/{id}": (server, f"{api}/v1/studies/{study_id}"),
            "GET /v1/studies/{id}/trials": (server, f"{api}/v1/studies/{study_id}/trials"),
        }
        for name, (_, url) in endpoints.items():  # each answers 200 with JSON before it is loaded
            resp = client.get(url, headers=headers)
            if resp.status_code != 200 or not resp.headers.get("content-type", "").startswith("application/json"):
                raise RuntimeError(f"{name}: {resp.status_code} {resp.headers.get('content-type')}: {resp.text[:500]}")

        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in endpoints}
        cpu: dict[str, float] = dict.fromkeys(endpoints, 0.0)
        wall: dict[str, float] = dict.fromkeys(endpoints, 0.0)
        machine = [0.0, 0.0]
        seconds = max(1, round(args.duration / args.rounds))
        for rnd in range(args.rounds):
            for name, (proc, url) in endpoints.items():
                c0, m0, w0 = cpu_seconds(proc.proc.pid), machine_cpu(), time.monotonic()
                out = run_wrk(wrk, lua, url, args.connections, args.threads, seconds, headers, work / "wrk.json")
                c1, m1, w1 = cpu_seconds(proc.proc.pid), machine_cpu(), time.monotonic()
                cpu[name] += c1 - c0
                wall[name] += w1 - w0
                machine[0] += m1[0] - m0[0]
                machine[1] += m1[1] - m0[1]
                s = client.get(f"{api}/v1/studies/{study_id}", headers=headers).json()
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
        final = client.get(f"{api}/v1/studies/{study_id}", headers=headers).json()
        result["_study"] = {"id": study_id, "status_after": final["status"], "trial_counts_after": final["trial_counts"],
                            "running_throughout": all(r["study"]["status"] == "running" for rs in runs.values() for r in rs)}
        if final["status"] in ("queued", "running"):
            client.post(f"{api}/v1/studies/{study_id}/cancel", headers=headers)
        return result
    finally:
        for p in procs:  # SIGTERM all, then wait: the Ray head stops the processes it started (the study's job too)
            p.terminate()
        t_stop = time.monotonic()
        for p in procs:
            p.wait_stopped(45 if p.name == "ray head" else 20)
        print(f"  stopped what it started in {time.monotonic() - t_stop:.1f} s", flush=True)
        client.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="8 connections, 5 s per endpoint in one round, a tiny study")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per endpoint, split over --rounds")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (ping, study, trials) per endpoint")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--trials", type=int, default=0, help="num_trials of the study (default: enough to outlast the load, at least 40)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seconds-per-epoch", type=float, default=0.1)
    ap.add_argument("--warm-trials", type=int, default=3, help="trials with metrics before the load starts")
    ap.add_argument("--ray-cpus", type=int, default=1, help="--num-cpus of the Ray head (one trial spins one core)")
    ap.add_argument("--study-timeout", type=float, default=240.0, help="seconds for the study to get --warm-trials measured")
    ap.add_argument("--token", action="store_true", help="send a bearer token (created with `caviar token create`)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, SQLite file)")
    ap.add_argument("--check-goals", action="store_true", help="exit 1 when a goal is missed, too")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--serve-minimal", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_minimal:
        serve_minimal(args.serve_minimal)
        return 0
    if args.smoke:
        args.duration, args.rounds, args.connections = 5.0, 1, 8
        args.epochs, args.warm_trials = 5, 1
    if not args.trials:  # one trial at a time, each at least epochs x seconds_per_epoch: twice the load's length
        load_s = 3 * args.duration + 3 * args.rounds * 2.0
        args.trials = max(40, math.ceil(2 * load_s / max(args.epochs * args.seconds_per_epoch, 0.05)))
    wrk = shutil.which("wrk")
    if wrk is None:
        print("error: wrk is not on PATH; install it (Debian/Ubuntu: `apt-get install -y wrk`; macOS: `brew install wrk`)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up what we started on SIGTERM too
    load = os.getloadavg()
    print(f"api_load: {args.connections} connections, wrk {args.threads} threads, {args.duration:g} s per endpoint in {args.rounds} "
          f"round(s); study busy_work {args.trials} trials x {args.epochs} epochs x {args.seconds_per_epoch:g} s, one at a time; "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="caviar-api-load-"))
    ok = False
    try:
        res = run(args, wrk, work)
        ok = True
    except Exception as exc:
        if not isinstance(exc, RuntimeError):
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        print(f"logs kept in {work}", file=sys.stderr)
        return 1
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    names = [k for k in res if not k.startswith("_")]
    base = res[names[0]]["req_per_s"]
    print(f"\n{'endpoint':<30} {'req/s':>8} {'x min':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'p99.9':>7} {'max ms':>7} "
          f"{'errors':>6} {'bytes':>6} {'srv cores':>9} {'CPU ms/req':>10}")
    for name in names:
        r = res[name]
        r["ratio_to_minimal"] = round(r["req_per_s"] / base, 3) if base else None
        # CPU per request moves less than req/s when other work takes the CPU away from the servers
        mine, theirs = r["server_cpu_ms_per_request"], res[names[0]]["server_cpu_ms_per_request"]
        r["cpu_per_request_vs_minimal"] = round(mine / theirs, 2) if mine and theirs else None
        lat = r["latency_ms"]
        print(f"{name:<30} {r['req_per_s']:>8.0f} {r['ratio_to_minimal']:>6.2f} {lat['p50']:>7.1f} {lat['p90']:>7.1f} {lat['p99']:>7.1f} "
              f"{lat['p99.9']:>7.1f} {lat['max']:>7.1f} {r['errors_total']:>6} {r['bytes_per_response']:>6} {r['server_cpu_cores']:>9.2f} "
              f"{r['server_cpu_ms_per_request'] or 0:>10.3f}")
    study = res["_study"]
    print(f"machine CPU busy during the load: {100 * (res['_machine_cpu_busy'] or 0):.0f}% of {os.cpu_count()} CPUs; study {study['id']} "
          f"{'running throughout' if study['running_throughout'] else 'NOT running throughout'}, {sum(study['trial_counts_after'].values())} "
          f"trials at the end ({study['status_after']})")
    goals = {}
    for name in names[1:]:
        r = res[name]
        goals[name] = {"p99_ms": r["latency_ms"]["p99"], "p99_ok": r["latency_ms"]["p99"] <= GOAL_P99_MS,
                       "ratio": r["ratio_to_minimal"], "ratio_ok": (r["ratio_to_minimal"] or 0) >= GOAL_RATIO}
        print(f"goal {name}: p99 {r['latency_ms']['p99']:.1f} ms (<= {GOAL_P99_MS:g}: {'met' if goals[name]['p99_ok'] else 'MISSED'}), "
              f"{r['ratio_to_minimal']:.2f}x the minimal req/s (>= {GOAL_RATIO:g}x: {'met' if goals[name]['ratio_ok'] else 'MISSED'}); "
              f"server CPU per request {r['cpu_per_request_vs_minimal']}x the minimal's")
    errors = sum(res[n]["errors_total"] for n in names)
    print(f"errors: {errors}" + ("" if errors == 0 else "  " + "; ".join(
        f"{n}: {res[n]['socket_errors']}, non-2xx {res[n]['non_2xx']}" for n in names if res[n]["errors_total"])))
    if not study["running_throughout"]:
        print("warning: the study was not running during every round; raise --trials or --epochs", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "serve_minimal")}, "cpus": os.cpu_count(),
            "load_average_before": load, "load_average_after": os.getloadavg(), "machine_cpu_busy": res["_machine_cpu_busy"], "study": study,
            "results": {n: res[n] for n in names}, "goals": goals, "errors": errors,
        }, indent=2, default=str))
    missed = not all(g["p99_ok"] and g["ratio_ok"] for g in goals.values())
    return 1 if errors or (args.check_goals and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
