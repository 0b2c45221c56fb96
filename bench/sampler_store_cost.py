"""Sampler and store cost as studies grow (issue §5): ms per trial of suggest + tell + store writes.

A study's driver does this per trial (Ray Tune's OptunaSearch + Caviar's StoreCallback, see
service/ray_adapter.py); here it is done in one process with a simulated objective and no training:
  suggest  - ``study.ask()`` and the study's define-by-run function (``search_spaces.define_by_run``
             on the ``seven_key`` preset): the sampler's work and Optuna's per-parameter writes
  tell     - ``trial.report(value, epoch)`` per epoch and ``study.tell(trial, value)`` at the end
  store    - Caviar's Store: ``upsert_trial(state="running")``, ``add_epoch`` per epoch,
             ``upsert_trial(state="completed")``
for samplers tpe (as make_sampler builds it: multivariate, group, constant_liar) and random, on
  inmemory - Optuna's InMemoryStorage and no Caviar store (the floor: the sampler alone)
  sqlite   - RDBStorage + Store on one SQLite file (WAL), as Caviar runs by default
  postgres - the same on a fresh PostgreSQL database caviar_bench_<random>, dropped after
The study is grown to N trials, then a window of trials is timed at that size. To reach 5,000
trials without running 5,000 TPE trials one by one, the study is prefilled: completed trials
(random configurations, simulated per-epoch values) go in with ``study.add_trials`` and bulk store
rows; then a few unmeasured warm-up trials run (the first ask after a prefill reads every trial
into Optuna's cache once) and then the measured window. ``--grown-sizes`` repeats sizes with the
study grown by real trials instead, to check that prefilling does not bias the figures.

    python -m bench.sampler_store_cost                 # full: N = 100, 1000, 5000; window 20
    python -m bench.sampler_store_cost --smoke         # CI: N = 20, 100; window 3 (~40 s)
    python -m bench.sampler_store_cost --postgres-url postgresql://postgres@127.0.0.1:5432/postgres --json out.json

PostgreSQL is used when ``--postgres-url`` (default $CAVIAR_TEST_POSTGRES_URL) names a reachable
server (an admin URL: the benchmark creates and drops its own database); otherwise its rows are
skipped with the reason. Goal: at N = 1,000 the median per-trial cost is at most 2% of a 5 s
trial, i.e. <= 100 ms.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import math
import os
import random
import statistics
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import insert

from search_spaces import SearchSpace, define_by_run, make_sampler, resolve_space
from service.store import MetricRow, Store, TrialRow, migrate, now, sqlalchemy_url

GOAL_MS = 100.0  # 2% of a 5 s trial
GOAL_N = 1000
OBJECTIVE, MODE = "val_accuracy", "max"
PARTS = ("suggest", "tell", "store", "total", "cpu")
SAMPLERS = ("tpe", "random")
STORAGES = ("inmemory", "sqlite", "postgres")


# -- the simulated trial ------------------------------------------------------------------------


def simulate(params: dict[str, Any], seed: int, epochs: int) -> list[dict[str, Any]]:
    """Per-epoch metrics of a trial, as the trainables report them: a smooth function of the
    configuration (best near lr = 3e-3, batch size 64, little dropout) plus seeded noise."""
    rng = random.Random(seed)
    lr, batch = float(params["lr"]), int(params["batch_size"])
    quality = 0.97 - 0.05 * (math.log10(lr) + 2.5) ** 2 - 0.015 * abs(math.log2(batch) - 6)
    quality -= 0.04 * float(params.get("dropout", 0.0)) + (0.02 if params.get("optimizer") == "sgd" else 0.0)
    quality = min(0.99, max(0.12, quality))
    out = []
    for epoch in range(1, epochs + 1):
        acc = min(0.999, max(0.0, 0.1 + (quality - 0.1) * (1 - math.exp(-epoch / 3)) + rng.gauss(0, 0.005)))
        out.append({
            "epoch": epoch, "train_loss": -math.log(max(acc, 1e-3)) * 0.9, "val_loss": -math.log(max(acc, 1e-3)),
            "val_accuracy": acc, "val_confidence": acc * 0.95, "lr": lr, "samples_per_s": 40_000.0 + rng.random() * 5_000,
        })
    return out


# -- one study on one storage -------------------------------------------------------------------


@dataclass
class Bench:
    """One Optuna study (and, unless in-memory, one Caviar study in the same database)."""

    sampler_kind: str
    storage_kind: str
    url: str | None  # the database URL (Caviar's form: sqlite:///..., postgresql://...), None: in-memory
    space: SearchSpace
    epochs: int
    seed: int
    store: Store | None = None
    study: optuna.Study = field(init=False)
    study_id: str = ""
    prefix: str = ""
    constants: dict[str, Any] = field(default_factory=dict)
    fn: Callable[[optuna.Trial], dict[str, Any]] = field(init=False)
    scratch: optuna.Study = field(init=False)

    def __post_init__(self) -> None:
        self.constants = {"epochs": self.epochs, "dataset": {"name": "mnist1d"}}
        self.fn = define_by_run(self.space, self.constants)
        sampler = make_sampler(self.sampler_kind, self.space, self.seed, max_grid_points=10**9)
        storage: optuna.storages.BaseStorage
        if self.url is None:
            storage, name = optuna.storages.InMemoryStorage(), "caviar-inmemory"
        else:
            migrate(self.url)
            self.store = Store(self.url)
            row = self.store.create_study("sampler-store-cost", {"search_space": "seven_key", "sampler": {"type": self.sampler_kind}})
            self.store.update_study(row.id, status="running", started_at=now())
            self.study_id, name = row.id, f"caviar-{row.id}"
            # as run_tune builds it (create_study wraps it in Optuna's _CachedStorage, as OptunaSearch does)
            storage = optuna.storages.RDBStorage(
                sqlalchemy_url(self.url),
                engine_kwargs={"connect_args": {"timeout": 30}} if self.url.startswith("sqlite") else {},
            )
        self.study = optuna.create_study(
            storage=storage, sampler=sampler, pruner=optuna.pruners.NopPruner(), study_name=name,
            load_if_exists=True, direction="maximize" if MODE == "max" else "minimize",
        )
        self.prefix = uuid.uuid4().hex[:5]  # Ray's trial ids: <experiment hash>_<counter>
        self.scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=self.seed + 1))

    def size(self) -> int:
        return len(self.study.get_trials(deepcopy=False))

    def trial_id(self, number: int) -> str:
        return f"{self.prefix}_{number:05d}"

    def config(self, params: dict[str, Any]) -> dict[str, Any]:
        """What StoreCallback stores: the trial's config without the dataset."""
        return {**params, **{k: v for k, v in self.constants.items() if k != "dataset"}}

    # -- a real trial, timed by part --------------------------------------------------------

    def run_trial(self) -> dict[str, float]:
        """One trial as the driver runs it; returns seconds per part."""
        t = {"suggest": 0.0, "tell": 0.0, "store": 0.0}
        store = self.store
        c0 = time.process_time()
        t0 = time.perf_counter()
        trial = self.study.ask()  # OptunaSearch.suggest: ask, then the define-by-run function
        self.fn(trial)
        params = trial.params
        t1 = time.perf_counter()
        t["suggest"] += t1 - t0
        tid = self.trial_id(trial.number)
        if store is not None:  # StoreCallback.on_trial_start
            store.upsert_trial(self.study_id, tid, config=self.config(params), state="running", started_at=now(), finished_at=None)
            t["store"] += time.perf_counter() - t1
        history = simulate(params, self.seed * 1_000_003 + trial.number, self.epochs)
        for metrics in history:
            t2 = time.perf_counter()
            trial.report(metrics[OBJECTIVE], metrics["epoch"])  # OptunaSearch.on_trial_result
            t3 = time.perf_counter()
            t["tell"] += t3 - t2
            if store is not None:  # StoreCallback.on_trial_result
                store.add_epoch(self.study_id, tid, metrics, OBJECTIVE, MODE)
                t["store"] += time.perf_counter() - t3
        t4 = time.perf_counter()
        self.study.tell(trial, history[-1][OBJECTIVE], state=TrialState.COMPLETE)  # OptunaSearch.on_trial_complete
        t5 = time.perf_counter()
        t["tell"] += t5 - t4
        if store is not None:  # StoreCallback.on_trial_complete
            store.upsert_trial(self.study_id, tid, state="completed", error=None, finished_at=now())
            t["store"] += time.perf_counter() - t5
        t["total"] = t["suggest"] + t["tell"] + t["store"]
        t["cpu"] = time.process_time() - c0  # this process's CPU: what a busy machine does not inflate
        return t

    # -- prefill ----------------------------------------------------------------------------

    def prefill(self, count: int, chunk: int = 500) -> None:
        """Add ``count`` completed trials quickly: Optuna via add_trials, the store in bulk."""
        done = 0
        while done < count:
            k = min(chunk, count - done)
            start = self.size()
            frozen: list[FrozenTrial] = []
            histories: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
            for i in range(k):
                s = self.scratch.ask()
                self.fn(s)
                params, dists = s.params, s.distributions
                self.scratch.tell(s, state=TrialState.FAIL)
                history = simulate(params, self.seed * 1_000_003 + start + i, self.epochs)
                frozen.append(optuna.trial.create_trial(
                    state=TrialState.COMPLETE, value=history[-1][OBJECTIVE], params=params, distributions=dists,
                    intermediate_values={m["epoch"]: m[OBJECTIVE] for m in history},
                ))
                histories.append((params, history))
            self.study.add_trials(frozen)
            if self.store is not None:
                self._store_rows(start, histories)
            done += k

    def _store_rows(self, start: int, histories: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
        assert self.store is not None
        finished = now()
        rows = [{
            "study_id": self.study_id, "trial_id": self.trial_id(start + i), "state": "completed",
            "config": self.config(params), "epochs": self.epochs, "last_metrics": history[-1],
            "best_value": max(m[OBJECTIVE] for m in history), "error": None, "retries": 0,
            "started_at": finished - timedelta(seconds=5), "finished_at": finished,
        } for i, (params, history) in enumerate(histories)]
        with self.store.session(write=True) as s:
            pks = {tid: pk for pk, tid in s.execute(insert(TrialRow).returning(TrialRow.pk, TrialRow.trial_id), rows)}
            metrics = [{"trial_pk": pks[self.trial_id(start + i)], "epoch": m["epoch"], "values": m}
                       for i, (_, history) in enumerate(histories) for m in history]
            s.execute(insert(MetricRow), metrics)

    def close(self) -> None:
        if self.store is not None:
            self.store.engine.dispose()
        storage = getattr(self.study._storage, "_backend", None)  # _CachedStorage(RDBStorage)
        if storage is not None:
            storage.engine.dispose()


# -- measuring ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def summarize(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {part: {"median_ms": round(statistics.median(s[part] for s in samples) * 1e3, 2),
                   "p90_ms": round(pct([s[part] for s in samples], 0.9) * 1e3, 2)} for part in PARTS}


def measure(b: Bench, sizes: list[int], window: int, warmup: int, grown: bool, profile: Path | None = None) -> list[dict[str, Any]]:
    """Grow ``b``'s study through ``sizes`` (prefilled, or by real trials when ``grown``) and time a
    window of trials at each size (with ``profile``, a cProfile of each window is written there)."""
    rows = []
    for n in sizes:
        have = b.size()
        t0 = time.perf_counter()
        if grown:
            for _ in range(max(0, n - have)):
                b.run_trial()
        else:
            b.prefill(max(0, n - warmup - have))
            for _ in range(max(0, n - b.size())):  # warm-up: real trials, not timed
                b.run_trial()
        grow_s = time.perf_counter() - t0
        at = b.size()
        prof = cProfile.Profile() if profile else None
        if prof:
            prof.enable()
        samples = [b.run_trial() for _ in range(window)]
        if prof and profile:
            prof.disable()
            profile.mkdir(parents=True, exist_ok=True)
            prof.dump_stats(profile / f"{b.sampler_kind}_{b.storage_kind}_{n}_{'grown' if grown else 'prefilled'}.prof")
        row: dict[str, Any] = {
            "sampler": b.sampler_kind, "storage": b.storage_kind, "n": n, "trials_before_window": at,
            "growth": "grown" if grown else "prefilled", "window": window, "epochs": b.epochs,
            "grow_s": round(grow_s, 2), **summarize(samples),
            "samples_ms": [{k: round(v * 1e3, 2) for k, v in s.items()} for s in samples],
        }
        rows.append(row)
        r = row
        print(f"  {b.sampler_kind:6} {b.storage_kind:8} N={n:<5} {r['growth']:9} total median {r['total']['median_ms']:8.1f} ms"
              f"  p90 {r['total']['p90_ms']:8.1f} ms  (grew in {grow_s:.1f} s)", flush=True)
    return rows


# -- databases ----------------------------------------------------------------------------------


def postgres_reason(admin: str | None) -> str | None:
    """None when the admin URL answers, else why the postgres rows are skipped."""
    if not admin:
        return "no --postgres-url and CAVIAR_TEST_POSTGRES_URL is unset"
    try:
        import psycopg

        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL at {admin} is not reachable: {type(exc).__name__}: {str(exc).strip()[:200]}"
    return None


@contextmanager
def database(kind: str, workdir: Path, admin: str | None) -> Iterator[str | None]:
    """A fresh, empty database for one study: None (in-memory), a SQLite file, or a PostgreSQL database."""
    if kind == "inmemory":
        yield None
    elif kind == "sqlite":
        path = workdir / f"caviar_{uuid.uuid4().hex[:8]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        import psycopg
        from sqlalchemy.engine import make_url

        assert admin is not None
        name = f"caviar_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(admin).set(database=name).render_as_string(hide_password=False)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- report -------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'sampler':7} {'storage':9} {'N':>5} {'growth':9} " + " ".join(f"{p + ' med/p90 ms':>20}" for p in PARTS)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{r[p]['median_ms']:>9.1f} /{r[p]['p90_ms']:>9.1f}" for p in PARTS)
        lines.append(f"{r['sampler']:7} {r['storage']:9} {r['n']:>5} {r['growth']:9} {cells}")
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]], n: int) -> list[str]:
    out = []
    for r in rows:
        if r["n"] == n and r["growth"] == "prefilled":
            med, p90 = r["total"]["median_ms"], r["total"]["p90_ms"]
            ok = med <= GOAL_MS
            r["meets_goal"] = ok
            out.append(f"  {r['sampler']:6} {r['storage']:8} median {med:7.1f} ms, p90 {p90:7.1f} ms: "
                       f"{'meets' if ok else 'MISSES'} the goal (<= {GOAL_MS:.0f} ms, 2% of a 5 s trial)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--smoke", action="store_true", help="N = 20, 100; window 3; tens of seconds")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000], help="study sizes N at which to time a window")
    p.add_argument("--grown-sizes", type=int, nargs="*", default=[100],
                   help="sizes also reached by real trials (no prefill), to check prefilling against (default: 100)")
    p.add_argument("--window", type=int, default=20, help="timed trials per size")
    p.add_argument("--warmup", type=int, default=2, help="untimed real trials after a prefill")
    p.add_argument("--epochs", type=int, default=10, help="epochs (reports and add_epoch writes) per trial")
    p.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    p.add_argument("--storages", nargs="+", choices=STORAGES, default=list(STORAGES))
    p.add_argument("--postgres-url", default=os.environ.get("CAVIAR_TEST_POSTGRES_URL"),
                   help="PostgreSQL admin URL (default $CAVIAR_TEST_POSTGRES_URL); a fresh caviar_bench_* database is created and dropped")
    p.add_argument("--workdir", type=Path, default=None, help="where the SQLite files go (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write every figure (and per-trial samples) here")
    p.add_argument("--profile", type=Path, default=None, help="write a cProfile (.prof) of each timed window into this folder")
    args = p.parse_args()
    if args.smoke:
        args.sizes, args.grown_sizes, args.window, args.warmup = [20, 100], [20], 3, 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # study-creation chatter only: tell/ask log nothing at INFO
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    skipped: dict[str, str] = {}
    storages = list(args.storages)
    if "postgres" in storages:
        reason = postgres_reason(args.postgres_url)
        if reason:
            skipped["postgres"] = reason
            storages.remove("postgres")
            print(f"postgres rows skipped: {reason}", flush=True)
    space = resolve_space("seven_key")
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="caviar_bench_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        plans = [(False, sorted(args.sizes)), (True, sorted(args.grown_sizes))]
        for grown, sizes in plans:
            if not sizes:
                continue
            for storage in storages:
                for sampler in args.samplers:
                    with database(storage, workdir, args.postgres_url) as url:
                        b = Bench(sampler, storage, url, space, args.epochs, args.seed)
                        try:
                            rows.extend(measure(b, sizes, args.window, args.warmup, grown, args.profile))
                        finally:
                            b.close()
    elapsed = time.perf_counter() - t_start

    print()
    print(f"ms per trial ({args.epochs} epochs: suggest = ask + define-by-run; tell = {args.epochs} reports + tell; "
          f"store = 2 upsert_trial + {args.epochs} add_epoch), median / p90 over {args.window} trials at each N")
    print(table(rows))
    goal_n = GOAL_N if GOAL_N in args.sizes else max(args.sizes)
    print(f"\ngoal at N={goal_n}:")
    print("\n".join(verdicts(rows, goal_n)))
    for grown_row in (r for r in rows if r["growth"] == "grown"):
        pre = next((r for r in rows if r["growth"] == "prefilled" and r["n"] == grown_row["n"]
                    and r["sampler"] == grown_row["sampler"] and r["storage"] == grown_row["storage"]), None)
        if pre is not None:
            grown_row["prefilled_over_grown"] = round(pre["total"]["median_ms"] / max(grown_row["total"]["median_ms"], 1e-9), 2)
    checks = [r for r in rows if "prefilled_over_grown" in r]
    if checks:
        print("\nprefilled vs grown (median total, prefilled / grown):")
        for r in checks:
            print(f"  {r['sampler']:6} {r['storage']:8} N={r['n']:<5} {r['prefilled_over_grown']:.2f}x")
    for name, reason in skipped.items():
        print(f"\n{name}: skipped ({reason})")
    print(f"\n{elapsed:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({
            "goal_ms": GOAL_MS, "goal_n": goal_n, "epochs": args.epochs, "window": args.window, "warmup": args.warmup,
            "sizes": args.sizes, "grown_sizes": args.grown_sizes, "seed": args.seed, "skipped": skipped,
            "optuna": optuna.__version__, "cpus": os.cpu_count(), "elapsed_s": round(elapsed, 1), "rows": rows,
        }, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
