"""Sampler and store cost as studies grow (issue §5): ms per trial of suggest + tell + store writes.

A study's driver does this per trial (Ray Tune's OptunaSearch subclassed as PruningOptunaSearch in
service.runner.searcher, and Caviar's StoreCallback in service.runner.callbacks); here it is done in
one process, as the driver does it, with a simulated objective and no training:
  suggest  - ``study.ask()`` and the study's define-by-run function (``search_spaces.define_by_run``
             on the ``seven_key`` preset): the sampler's work and Optuna's per-parameter writes
  report   - ``trial.report(value, epoch)``: none for a completed trial since PruningOptunaSearch
             stopped reporting per epoch (commit ec56fe5); with ``--per-epoch-reports`` one per
             epoch, as Ray's stock OptunaSearch (and Caviar before ec56fe5) does
  tell     - ``study.tell(trial, value)`` at the end
  store    - Caviar's Store, through the driver's own StoreCallback fed small stand-ins for Tune's
             trials: on_trial_start (``trials.upsert(state="running")``), on_trial_result per epoch
             (``trials.add_epoch`` with ``reported_at``), on_trial_complete (``trials.upsert(state=
             "completed")``)
  cpu      - this process's CPU time for all of it (a loaded machine inflates wall time, less so this)
for samplers
  tpe              - as make_sampler builds it: search_spaces.FastTPESampler (multivariate, group,
                     constant_liar), SciPy's log_ndtr in Optuna's TPE math during its own calls
  random
  tpe-optuna-ndtr  - optuna.samplers.TPESampler with the same arguments: Optuna's own pure-Python
                     log_ndtr (Caviar before the §5 fix)
  tpe-whole-history - Caviar's TPE before issue 14: FastTPESampler without the bounded history (``tpe``
                     models the best 100 and the most recent 900 of a study's finished trials past
                     1,000) and with Optuna's own group decomposition, which adds every trial again on
                     each suggestion (``tpe``'s adds each trial once: the same groups)
on
  inmemory      - Optuna's InMemoryStorage and no Caviar store (the floor: the sampler alone)
  sqlite        - as run_study builds them by default: Optuna's JournalStorage (a file in the data
                  directory, service.runner.optuna_storage) + Caviar's Store on one SQLite file (WAL)
  postgres      - the same with the Store on a fresh PostgreSQL database caviar_bench_<random>, dropped after
  sqlite-rdb    - Optuna's RDBStorage in the same SQLite database (CAVIAR_OPTUNA_STORAGE=database;
                  Caviar's default before the §5 fix)
  postgres-rdb  - the same on PostgreSQL
  sqlite-normal - sqlite-rdb with the store's pragmas on Optuna's connections (synchronous=NORMAL:
                  no fsync per commit in WAL mode); a fix measured and not adopted

The study is grown to N trials, then a window of trials is timed at that size; all configurations
are grown together and their windows interleaved trial by trial (the grown-by-real-trials checks
included), so that load from other work on the machine falls on all of them alike. To reach 5,000
trials without running 5,000 TPE trials one by one, the study is prefilled: completed trials
(random configurations of the search space with simulated per-epoch values) are written to Optuna
in bulk (its own tables through its ORM models, or ``study.add_trials`` for in-memory and journal
storages) and to Caviar's store through the same StoreCallback calls as a timed trial, untimed
(about 11 ms a 10-epoch trial on SQLite, 26 ms on a local PostgreSQL: most of a full run's setup),
checked, then a few untimed warm-up trials run (the first ask after a prefill loads every trial
into Optuna's cache once) and then the timed window. ``--grown-sizes`` repeats sizes with studies
grown by real trials, to check that prefilling does not bias the figures.

Checks (--smoke asserts them; a full run reports them and exits 1 when one fails): FastTPESampler
suggests what Optuna's TPESampler suggests for the same seed (the ``seven_key`` space, 30 trials),
and after the run every study's store and Optuna study hold exactly the trials and epochs written.

    python -m bench.sampler_store_cost                 # full: N = 100, 1000, 5000; window 20; docs/bench/sampler_store_cost.json
    python -m bench.sampler_store_cost --smoke         # CI: N = 20, 100; window 3; inmemory, sqlite, postgres
    python -m bench.sampler_store_cost --per-epoch-reports --storages sqlite postgres --sizes 1000
    python -m bench.sampler_store_cost --storages sqlite sqlite-rdb --samplers tpe tpe-optuna-ndtr --sizes 1000
    python -m bench.sampler_store_cost --storages sqlite sqlite-normal --sizes 1000 --profile /tmp/prof
                                                       # cProfile per window (it inflates the timings)

PostgreSQL is used when ``--postgres-url`` (default $CAVIAR_TEST_POSTGRES_URL) names a reachable
server (an admin URL: the benchmark creates and drops its own databases); otherwise its rows are
skipped with the reason. Goal: at N = 1,000 the median per-trial cost is at most 2% of a 5 s
trial, i.e. <= 100 ms.
"""

from __future__ import annotations

import cProfile
import logging
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event, func, select

from bench._common import (
    Checks,
    FakeTrial,
    json_path,
    parser,
    pct,
    postgres_database,
    store_callback,
    table,
    write_json,
)
from search_spaces import FastTPESampler, SearchSpace, define_by_run, make_sampler, resolve_space, suggest
from service.runner.callbacks import store_for
from service.runner.optuna_storage import optuna_storage
from service.settings import OptunaStorage
from service.store import Store, migrate, now, sqlalchemy_url
from service.store.models import MetricRow, TrialRow

GOAL_MS = 100.0  # 2% of a 5 s trial
GOAL_N = 1000
OBJECTIVE, MODE = "val_accuracy", "max"
PARTS = ("suggest", "report", "tell", "store", "total", "cpu")
SAMPLERS = ("tpe", "random", "tpe-optuna-ndtr", "tpe-whole-history")
STORAGES = ("inmemory", "sqlite", "postgres", "sqlite-rdb", "postgres-rdb", "sqlite-normal")
DEFAULT_STORAGES = STORAGES
SMOKE_STORAGES = ("inmemory", "sqlite", "postgres")  # the fixes on request: --smoke --storages ...


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


# -- storages -----------------------------------------------------------------------------------


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class SqliteTunedRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose SQLite connections use the store's pragmas (WAL, synchronous=NORMAL):
    a commit no longer waits for an fsync. Re-applied when unpickled (Tune pickles its searcher)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tune()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._tune()

    def _tune(self) -> None:
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self.engine.dispose()  # connections opened by __init__ (schema checks) lack the pragmas


def make_bench_sampler(kind: str, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """``tpe-optuna-ndtr``: Optuna's own TPESampler with the arguments make_sampler gives FastTPESampler."""
    if kind == "tpe-optuna-ndtr":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if kind == "tpe-whole-history":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = FastTPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
        sampler._group_decomposed_search_space = _GroupDecomposedSearchSpace(True)
        return sampler
    return make_sampler(kind, space, seed, max_grid_points=10**9)


# -- one study on one storage -------------------------------------------------------------------


@dataclass
class Bench:
    """One Optuna study (and, unless in-memory, one Caviar study) as one study's driver has them."""

    sampler_kind: str
    storage_kind: str
    url: str | None  # the Caviar store's database (sqlite:///..., postgresql://...), None: in-memory
    space: SearchSpace
    epochs: int
    seed: int
    data_dir: Path | None = None  # where the journal storages keep their files
    per_epoch_reports: bool = False
    grown: bool = False  # grown by real trials (the check), else prefilled
    sizes: list[int] = field(default_factory=list)  # the sizes at which it is timed
    store: Store | None = None
    study: optuna.Study = field(init=False)
    study_id: str = ""
    prefix: str = ""
    constants: dict[str, Any] = field(default_factory=dict)
    fn: Callable[[optuna.Trial], dict[str, Any]] = field(init=False)
    scratch: optuna.Study = field(init=False)
    profile: cProfile.Profile | None = None
    samples: list[dict[str, float]] = field(default_factory=list)
    callback: Any = None  # the driver's StoreCallback on this study (None: in-memory, no store)
    trials_written: int = 0  # to Optuna (and to the store, when there is one)
    epochs_written: int = 0  # to the store

    @property
    def name(self) -> str:
        return f"{self.sampler_kind}/{self.storage_kind}"

    def __post_init__(self) -> None:
        self.constants = {"epochs": self.epochs, "dataset": {"name": "mnist1d"}}
        self.fn = define_by_run(self.space, self.constants)
        sampler = make_bench_sampler(self.sampler_kind, self.space, self.seed)
        storage: optuna.storages.BaseStorage
        name = "caviar-inmemory"
        if self.url is not None:
            migrate(self.url)
            self.store = store_for(self.url)  # the Store the callback writes through
            row = self.store.studies.create("sampler-store-cost", {"search_space": "seven_key", "sampler": {"type": self.sampler_kind},
                                                                   "objective": {"metric": OBJECTIVE, "mode": MODE}})
            self.store.studies.update(row.id, status="running", started_at=now())
            self.study_id, name = row.id, f"caviar-{row.id}"
            self.callback = store_callback(self.study_id, self.url, OBJECTIVE, MODE, self.epochs)
        if self.storage_kind == "inmemory":
            storage = optuna.storages.InMemoryStorage()
        elif self.storage_kind == "sqlite-normal":
            assert self.url is not None
            storage = SqliteTunedRDBStorage(sqlalchemy_url(self.url), engine_kwargs={"connect_args": {"timeout": 30}})
        else:  # as run_study builds it (create_study wraps an RDBStorage in Optuna's _CachedStorage, as OptunaSearch does)
            assert self.url is not None and self.data_dir is not None
            kind: OptunaStorage = "database" if self.storage_kind.endswith("-rdb") else "journal"
            storage = optuna_storage(kind, self.url, self.data_dir, self.study_id)
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

    # -- the driver's store writes: StoreCallback's hooks, as Tune calls them ---------------------

    def on_start(self, number: int, params: dict[str, Any]) -> FakeTrial:
        trial = FakeTrial(self.trial_id(number), {**params, **self.constants})
        self.callback.on_trial_start(number, [trial], trial)
        return trial

    def on_result(self, trial: FakeTrial, metrics: dict[str, Any]) -> None:
        trial.last_result = {**metrics, "training_iteration": metrics["epoch"], "trial_id": trial.trial_id, "config": trial.config}
        self.callback.on_trial_result(metrics["epoch"], [trial], trial, trial.last_result)
        self.epochs_written += 1

    def on_complete(self, trial: FakeTrial) -> None:
        self.callback.on_trial_complete(int(trial.last_result["epoch"]), [trial], trial)

    # -- a real trial, timed by part --------------------------------------------------------

    def run_trial(self) -> dict[str, float]:
        """One trial as the driver runs it; returns seconds per part."""
        if self.profile is not None:
            self.profile.enable()
        try:
            return self._trial()
        finally:
            if self.profile is not None:
                self.profile.disable()

    def _trial(self) -> dict[str, float]:
        t = dict.fromkeys(PARTS, 0.0)
        store = self.store
        c0 = time.process_time()
        t0 = time.perf_counter()
        trial = self.study.ask()  # OptunaSearch.suggest: ask, then the define-by-run function
        self.fn(trial)
        params = trial.params
        t1 = time.perf_counter()
        t["suggest"] += t1 - t0
        if store is not None:
            stand_in = self.on_start(trial.number, params)  # StoreCallback.on_trial_start
            t["store"] += time.perf_counter() - t1
        history = simulate(params, self.seed * 1_000_003 + trial.number, self.epochs)
        for metrics in history:
            t2 = time.perf_counter()
            if self.per_epoch_reports:  # Ray's OptunaSearch.on_trial_result (a no-op in PruningOptunaSearch)
                trial.report(metrics[OBJECTIVE], metrics["epoch"])
            t3 = time.perf_counter()
            t["report"] += t3 - t2
            if store is not None:  # StoreCallback.on_trial_result
                self.on_result(stand_in, metrics)
                t["store"] += time.perf_counter() - t3
        t4 = time.perf_counter()
        self.study.tell(trial, history[-1][OBJECTIVE], state=TrialState.COMPLETE)  # OptunaSearch.on_trial_complete
        t5 = time.perf_counter()
        t["tell"] += t5 - t4
        self.trials_written += 1
        if store is not None:  # StoreCallback.on_trial_complete
            self.on_complete(stand_in)
            t["store"] += time.perf_counter() - t5
        t["total"] = t["suggest"] + t["report"] + t["tell"] + t["store"]
        t["cpu"] = time.process_time() - c0
        return t

    # -- prefill ----------------------------------------------------------------------------

    def prefill(self, count: int, chunk: int = 500) -> None:
        """Add ``count`` completed trials (in bulk to Optuna; through StoreCallback to the store), then check what was written."""
        last: FrozenTrial | None = None
        start = self.size()
        done = 0
        while done < count:
            k = min(chunk, count - done)
            frozen: list[FrozenTrial] = []
            histories: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
            for i in range(k):
                s = self.scratch.ask()  # a random configuration of the space (conditionals respected)
                self.fn(s)
                params, dists = s.params, s.distributions
                self.scratch.tell(s, state=TrialState.FAIL)
                history = simulate(params, self.seed * 1_000_003 + start + done + i, self.epochs)
                frozen.append(optuna.trial.create_trial(
                    state=TrialState.COMPLETE, value=history[-1][OBJECTIVE], params=params, distributions=dists,
                    intermediate_values={m["epoch"]: m[OBJECTIVE] for m in history} if self.per_epoch_reports else None,
                ))
                histories.append((params, history))
            backend = getattr(self.study._storage, "_backend", None)  # _CachedStorage(RDBStorage)
            if isinstance(backend, optuna.storages.RDBStorage):
                self._bulk_optuna(backend, start + done, frozen)
            else:
                self.study.add_trials(frozen)
            for i, (params, history) in enumerate(histories):
                self.trials_written += 1
                if self.store is not None:  # the trial's store writes, as a real one makes them (untimed)
                    stand_in = self.on_start(start + done + i, params)
                    for metrics in history:
                        self.on_result(stand_in, metrics)
                    self.on_complete(stand_in)
            done += k
            last = frozen[-1]
        if last is not None:  # what the sampler will read is what was meant to be written
            trials = self.study.get_trials(deepcopy=False)
            got = trials[-1]
            if len(trials) != start + count or got.number != start + count - 1 or got.params != last.params or got.value != last.value:
                raise RuntimeError(f"{self.name}: prefill check failed ({len(trials)} trials, last {got.params} != {last.params})")
            if self.store is not None and self.store.trials.counts(self.study_id)["completed"] < start + count:
                raise RuntimeError(f"{self.name}: prefill check failed (store rows)")

    def _bulk_optuna(self, backend: optuna.storages.RDBStorage, start: int, trials: list[FrozenTrial]) -> None:
        """Completed trials straight into Optuna's tables, in one transaction (add_trials writes
        each parameter and intermediate value with its own statements: ~0.1 s a trial)."""
        from optuna.storages._rdb import models

        finite_value = models.TrialValueModel.TrialValueType.FINITE
        finite_step = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
        session = backend.scoped_session()
        try:
            for i, ft in enumerate(trials):
                assert ft.value is not None
                row = models.TrialModel(study_id=self.study._study_id, number=start + i, state=ft.state,
                                        datetime_start=ft.datetime_start, datetime_complete=ft.datetime_complete)
                session.add(row)
                session.add(models.TrialValueModel(trial=row, objective=0, value=ft.value, value_type=finite_value))
                for name, value in ft.params.items():
                    dist = ft.distributions[name]
                    session.add(models.TrialParamModel(trial=row, param_name=name, param_value=dist.to_internal_repr(value),
                                                       distribution_json=distribution_to_json(dist)))
                for step, value in ft.intermediate_values.items():
                    session.add(models.TrialIntermediateValueModel(trial=row, step=step, intermediate_value=value,
                                                                   intermediate_value_type=finite_step))
            session.commit()
        except Exception:
            session.rollback()
            raise
        finally:
            session.close()

    def written_vs_stored(self) -> dict[str, Any]:
        """What was written (trials, epochs) against what the Optuna study and the store hold now."""
        trials = self.study.get_trials(deepcopy=False)
        out: dict[str, Any] = {"trials_written": self.trials_written, "optuna_trials": len(trials),
                               "optuna_complete": sum(1 for t in trials if t.state == TrialState.COMPLETE)}
        if self.store is not None:
            counts = self.store.trials.counts(self.study_id)
            with self.store.db.session() as s:  # a count, read beside the store's API (which has none)
                metric_rows = s.scalar(select(func.count()).select_from(MetricRow).join(TrialRow, TrialRow.pk == MetricRow.trial_pk)
                                       .where(TrialRow.study_id == self.study_id))
            out |= {"store_trials": sum(counts.values()), "store_completed": counts["completed"],
                    "epochs_written": self.epochs_written, "store_metric_rows": int(metric_rows or 0)}
        return out

    def holds_what_was_written(self, got: dict[str, Any]) -> bool:
        n = self.trials_written
        want = {"optuna_trials": n, "optuna_complete": n}
        if self.store is not None:
            want |= {"store_trials": n, "store_completed": n, "store_metric_rows": self.epochs_written}
        return all(got.get(k) == v for k, v in want.items())

    def close(self) -> None:
        if self.store is not None:
            self.store.db.dispose()
        backend = getattr(self.study._storage, "_backend", None)
        if isinstance(backend, optuna.storages.RDBStorage):
            backend.scoped_session.remove()
            backend.engine.dispose()


# -- measuring ----------------------------------------------------------------------------------


def summarize(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {part: {"median_ms": round(statistics.median(s[part] for s in samples) * 1e3, 2),
                   "p90_ms": round(pct([s[part] for s in samples], 0.9) * 1e3, 2)} for part in PARTS}


def measure(benches: list[Bench], window: int, warmup: int, profile: Path | None) -> list[dict[str, Any]]:
    """For each size N (the union of the benches' ``sizes``): grow every bench that is timed at N
    (prefilled, or by real trials when ``grown``), then time a window of trials on all of them
    together, their trials interleaved one by one so that load from elsewhere falls on all alike."""
    rows = []
    for n in sorted({n for b in benches for n in b.sizes}):
        active = [b for b in benches if n in b.sizes]
        grow_s: dict[int, float] = {}
        for b in active:
            t0 = time.perf_counter()
            if not b.grown:
                b.prefill(max(0, n - warmup - b.size()))
            for _ in range(max(0, n - b.size())):  # grown: all real trials; prefilled: the warm-up (not timed)
                b.run_trial()
            grow_s[id(b)] = time.perf_counter() - t0
            b.samples = []
            b.profile = cProfile.Profile() if profile else None
        at = {id(b): b.size() for b in active}
        for _ in range(window):
            for b in active:
                b.samples.append(b.run_trial())
        for b in active:
            growth = "grown" if b.grown else "prefilled"
            if profile and b.profile:
                profile.mkdir(parents=True, exist_ok=True)
                b.profile.dump_stats(profile / f"{b.sampler_kind}_{b.storage_kind.replace('+', '-')}_{n}_{growth}.prof")
            b.profile = None
            row: dict[str, Any] = {
                "sampler": b.sampler_kind, "storage": b.storage_kind, "n": n, "trials_before_window": at[id(b)],
                "growth": growth, "window": window, "epochs": b.epochs, "grow_s": round(grow_s[id(b)], 2),
                **summarize(b.samples), "samples_ms": [{k: round(v * 1e3, 2) for k, v in s.items()} for s in b.samples],
            }
            rows.append(row)
            print(f"  {b.sampler_kind:9} {b.storage_kind:16} N={n:<5} {growth:9} total median {row['total']['median_ms']:7.1f} ms"
                  f"  p90 {row['total']['p90_ms']:7.1f} ms  cpu {row['cpu']['median_ms']:7.1f} ms  (grown in {grow_s[id(b)]:.1f} s)", flush=True)
    rows.sort(key=lambda r: (r["growth"] != "prefilled", r["n"], STORAGES.index(r["storage"]), SAMPLERS.index(r["sampler"])))
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
    elif kind.startswith("postgres"):
        assert admin is not None
        with postgres_database(admin) as url:
            yield url
    else:  # sqlite, sqlite-rdb, sqlite-normal
        path = workdir / f"caviar_{uuid.uuid4().hex[:8]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)


def open_benches(stack: ExitStack, plans: list[tuple[bool, list[int], list[str]]], samplers: list[str], workdir: Path,
                 admin: str | None, space: SearchSpace, epochs: int, seed: int, per_epoch_reports: bool) -> list[Bench]:
    """One bench per (growth, storage, sampler) of ``plans`` (grown?, sizes, storages), each on a fresh database."""
    benches = []
    for grown, sizes, storages in plans:
        for storage in storages:
            for sampler in samplers:
                if not sizes:
                    continue
                url = stack.enter_context(database(storage, workdir, admin))
                b = Bench(sampler, storage, url, space, epochs, seed, data_dir=workdir / "data", per_epoch_reports=per_epoch_reports,
                          grown=grown, sizes=sorted(sizes))
                stack.callback(b.close)
                benches.append(b)
    return benches


# -- report -------------------------------------------------------------------------------------


def cost_table(rows: list[dict[str, Any]]) -> str:
    return table(["sampler", "storage", "N", "growth", *(f"{p} med/p90" for p in PARTS)],
                 [[r["sampler"], r["storage"], r["n"], r["growth"], *(f"{r[p]['median_ms']:.1f}/{r[p]['p90_ms']:.1f}" for p in PARTS)]
                  for r in rows], left=2)


def same_suggestions(space: SearchSpace, seed: int, n: int = 30) -> tuple[bool, str]:
    """Whether the benchmark's ``tpe`` (FastTPESampler) suggests what ``tpe-optuna-ndtr`` (Optuna's
    TPESampler, same arguments) does, trial by trial, on the same simulated objective."""

    def run(sampler: optuna.samplers.BaseSampler) -> list[dict[str, Any]]:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        out = []
        for i in range(n):
            trial = study.ask()
            params = suggest(trial, space)
            out.append(params)
            study.tell(trial, simulate(params, seed * 1_000_003 + i, 3)[-1][OBJECTIVE])
        return out

    fast_sampler = make_bench_sampler("tpe", space, seed)
    if not isinstance(fast_sampler, FastTPESampler):
        return False, f"make_sampler('tpe') is a {type(fast_sampler).__name__}, not FastTPESampler"
    fast, slow = run(fast_sampler), run(make_bench_sampler("tpe-optuna-ndtr", space, seed))
    for i, (f, o) in enumerate(zip(fast, slow, strict=True)):
        if f.keys() != o.keys() or any(
                not math.isclose(f[k], o[k], rel_tol=1e-9) if isinstance(f[k], float) else f[k] != o[k] for k in f):
            return False, f"trial {i}: FastTPESampler {f}, TPESampler {o}"
    return True, f"{n} trials alike"


def verdicts(rows: list[dict[str, Any]], n: int) -> list[str]:
    out = []
    for r in rows:
        if r["n"] == n and r["growth"] == "prefilled":
            med, p90 = r["total"]["median_ms"], r["total"]["p90_ms"]
            r["meets_goal"] = med <= GOAL_MS
            out.append(f"  {r['sampler']:9} {r['storage']:16} median {med:7.1f} ms (p90 {p90:7.1f}, cpu {r['cpu']['median_ms']:6.1f}): "
                       f"{'meets' if r['meets_goal'] else 'MISSES'} the goal")
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "N = 20, 100; window 3; inmemory, sqlite, postgres; tens of seconds", "sampler_store_cost.json")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000], help="study sizes N at which a window is timed")
    p.add_argument("--grown-sizes", type=int, nargs="*", default=[100],
                   help="sizes also reached by real trials (no prefill), every configuration, to check prefilling against")
    p.add_argument("--grown-inmemory-sizes", type=int, nargs="*", default=[1000],
                   help="the same check at larger sizes, in-memory configurations only (default: 1000)")
    p.add_argument("--window", type=int, default=20, help="timed trials per configuration and size")
    p.add_argument("--warmup", type=int, default=2, help="untimed real trials after a prefill")
    p.add_argument("--epochs", type=int, default=10, help="epochs (add_epoch writes) per trial")
    p.add_argument("--per-epoch-reports", action="store_true",
                   help="report every epoch to Optuna, as Ray's stock OptunaSearch does (PruningOptunaSearch does not since ec56fe5)")
    p.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=["tpe", "random"])
    p.add_argument("--storages", nargs="+", choices=STORAGES, default=list(DEFAULT_STORAGES))
    p.add_argument("--postgres-url", default=os.environ.get("CAVIAR_TEST_POSTGRES_URL"),
                   help="PostgreSQL admin URL (default $CAVIAR_TEST_POSTGRES_URL); fresh caviar_bench_* databases are created and dropped")
    p.add_argument("--workdir", type=Path, default=None, help="where SQLite and journal files go (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=Path, default=None, help="write a cProfile (.prof) of each timed window into this folder")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.grown_sizes, args.grown_inmemory_sizes, args.window, args.warmup = [20, 100], [20], [], 3, 1
        if args.storages == list(DEFAULT_STORAGES):
            args.storages = list(SMOKE_STORAGES)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the PostgreSQL databases are dropped
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # study-creation chatter; ask/tell log nothing at INFO
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # JournalStorage, group TPE

    skipped: dict[str, str] = {}
    storages = list(dict.fromkeys(args.storages))
    if any(s.startswith("postgres") for s in storages):
        reason = postgres_reason(args.postgres_url)
        if reason:
            skipped["postgres"] = reason
            storages = [s for s in storages if not s.startswith("postgres")]
            print(f"postgres rows skipped: {reason}", flush=True)
    space = resolve_space("seven_key")
    checks = Checks("sampler_store_cost")
    alike, detail = same_suggestions(space, args.seed)
    checks.check(alike, f"FastTPESampler suggests what Optuna's TPESampler suggests, same seed and arguments: {detail}")
    rows: list[dict[str, Any]] = []
    stored: dict[str, dict[str, Any]] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="caviar_bench_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        inmemory = [s for s in storages if s == "inmemory"]
        plans = [
            (False, sorted(set(args.sizes)), storages),
            (True, sorted(set(args.grown_sizes)), [s for s in storages if s not in inmemory]),
            (True, sorted(set(args.grown_sizes) | set(args.grown_inmemory_sizes)), inmemory),
        ]
        with ExitStack() as stack:
            benches = open_benches(stack, plans, args.samplers, workdir, args.postgres_url, space, args.epochs, args.seed,
                                   args.per_epoch_reports)
            print(f"{len(benches)} studies; timed at N = {sorted({n for b in benches for n in b.sizes})}", flush=True)
            rows.extend(measure(benches, args.window, args.warmup, args.profile))
            for b in benches:  # before they close: what each study holds against what was written to it
                got = stored[f"{b.name}/{'grown' if b.grown else 'prefilled'}"] = b.written_vs_stored()
                checks.check(b.holds_what_was_written(got), f"{b.name} ({'grown' if b.grown else 'prefilled'}) holds what was written: {got}")
    elapsed = time.perf_counter() - t_start

    print()
    reports = f"{args.epochs} per trial" if args.per_epoch_reports else "none (as PruningOptunaSearch)"
    print(f"ms per trial, median/p90 over {args.window} trials at each N ({args.epochs} epochs; suggest = ask + define-by-run; "
          f"report = Optuna reports, {reports}; tell = tell; store = StoreCallback: 2 trials.upsert + {args.epochs} trials.add_epoch; "
          "cpu = this process's CPU)")
    print(cost_table(rows))
    goal_n = GOAL_N if GOAL_N in args.sizes else max(args.sizes)
    print(f"\ngoal at N={goal_n}: median total <= {GOAL_MS:.0f} ms (2% of a 5 s trial)")
    print("\n".join(verdicts(rows, goal_n)))
    grown = []
    for g in (r for r in rows if r["growth"] == "grown"):
        pre = next((r for r in rows if r["growth"] == "prefilled" and r["n"] == g["n"]
                    and r["sampler"] == g["sampler"] and r["storage"] == g["storage"]), None)
        if pre is not None:
            g["prefilled_over_grown"] = round(pre["total"]["median_ms"] / max(g["total"]["median_ms"], 1e-9), 2)
            g["prefilled_over_grown_cpu"] = round(pre["cpu"]["median_ms"] / max(g["cpu"]["median_ms"], 1e-9), 2)
            grown.append(g)
    if grown:
        print("\nprefilled vs grown by real trials, ratio of medians (total, cpu):")
        for g in grown:
            print(f"  {g['sampler']:9} {g['storage']:16} N={g['n']:<5} {g['prefilled_over_grown']:.2f}x  {g['prefilled_over_grown_cpu']:.2f}x")
    for name, reason in skipped.items():
        print(f"\n{name}: skipped ({reason})")
    print(f"\n{elapsed:.0f} s in all, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    write_json(json_path(args, "sampler_store_cost"), {
        "goal_ms": GOAL_MS, "goal_n": goal_n, "epochs": args.epochs, "per_epoch_reports": args.per_epoch_reports,
        "window": args.window, "warmup": args.warmup,
        "sizes": args.sizes, "grown_sizes": args.grown_sizes, "grown_inmemory_sizes": args.grown_inmemory_sizes,
        "seed": args.seed, "skipped": skipped, "optuna": optuna.__version__, "cpus": os.cpu_count(),
        "loadavg_end": os.getloadavg(), "elapsed_s": round(elapsed, 1), "rows": rows, "stored": stored, "checks": checks.as_dict(),
    })
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
